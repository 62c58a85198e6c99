//! Validation of the parsed model; every error points at the user's tokens.

use std::collections::BTreeSet;

use crate::ast::{Machine, SchedulerInput};

fn combine(errors: impl IntoIterator<Item = syn::Error>) -> syn::Result<()> {
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(mut first) => {
            for e in errors {
                first.combine(e);
            }
            Err(first)
        }
    }
}

pub fn machine(m: &Machine) -> syn::Result<()> {
    let mut errors: Vec<syn::Error> = m.errors.to_vec();
    if m.steps.is_empty() && errors.is_empty() {
        errors.push(syn::Error::new_spanned(
            m.ident,
            "a machine needs at least one step variant",
        ));
    }
    let names: Vec<String> = m.steps.iter().map(|s| s.variant.to_string()).collect();
    let mut seen = BTreeSet::new();
    for step in &m.steps {
        if !seen.insert(step.variant.to_string()) {
            errors.push(syn::Error::new_spanned(step.variant, "duplicate step name"));
        }
        let mut successors = BTreeSet::new();
        for next in &step.next {
            if !names.contains(&next.to_string()) {
                errors.push(syn::Error::new_spanned(
                    next,
                    format!(
                        "`{next}` is not a step of `{}`; its steps are: {}",
                        m.ident,
                        names.join(", ")
                    ),
                ));
            } else if !successors.insert(next.to_string()) {
                errors.push(syn::Error::new_spanned(
                    next,
                    format!("`{next}` is listed twice"),
                ));
            }
        }
    }
    let mut aliases = BTreeSet::new();
    for step in &m.steps {
        for alias in &step.aliases {
            let old = alias.value();
            if names.contains(&old) {
                errors.push(syn::Error::new_spanned(
                    alias,
                    format!("`{old}` is the name of a step of `{}`: an alias must be a former name no step has now", m.ident),
                ));
            } else if !aliases.insert(old.clone()) {
                errors.push(syn::Error::new_spanned(
                    alias,
                    format!(
                        "`{old}` is an alias of two steps: a stored `{old}` must mean one of them"
                    ),
                ));
            }
        }
    }
    combine(errors)
}

pub fn scheduler(s: &SchedulerInput) -> syn::Result<()> {
    let mut errors = Vec::new();
    if s.machines.is_empty() {
        errors.push(syn::Error::new_spanned(
            &s.ident,
            "a scheduler needs at least one machine: `scheduler!(Tasks { Greeter })`",
        ));
    }
    let mut seen = BTreeSet::new();
    for m in &s.machines {
        if !seen.insert(m.to_string()) {
            errors.push(syn::Error::new_spanned(m, "this machine is listed twice"));
        }
    }
    combine(errors)
}
