//! Parsing: the user's tokens into a plain model.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{
    braced, bracketed, Attribute, Data, DeriveInput, Fields, Ident, Token, Type, Visibility,
};

/// A machine: an enum whose variants each hold one step.
pub struct Machine<'a> {
    pub ident: &'a Ident,
    /// `#[output(T)]`: what a finished task returns.
    pub output: Option<Type>,
    pub steps: Vec<StepVariant<'a>>,
    /// Errors found while parsing, reported together with validation errors.
    pub errors: Vec<syn::Error>,
}

/// One variant of a machine enum.
pub struct StepVariant<'a> {
    pub variant: &'a Ident,
    pub ty: &'a Type,
    pub next: Vec<Ident>,
    /// The successors marked `join`: reached by `NextStep::join`.
    pub joins: Vec<Ident>,
    /// The successors marked `wait`: reached by `NextStep::wait`.
    pub waits: Vec<Ident>,
    pub initial: bool,
    /// `#[serde(alias = "Old")]`: former names of the step, which live rows
    /// may still carry and the claim takes too.
    pub aliases: Vec<syn::LitStr>,
}

/// One entry of a `#[next(..)]` list: `Step`, `join Step` or `wait Step`.
pub struct Successor {
    pub how: Option<Ident>,
    pub step: Ident,
}

impl Parse for Successor {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let first: Ident = input.parse()?;
        if !input.peek(Ident) {
            return Ok(Successor {
                how: None,
                step: first,
            });
        }
        if first != "join" && first != "wait" {
            return Err(syn::Error::new_spanned(
                &first,
                format!(
                    "`{first}` is not a kind of transition: write `join Step` (the step after \
                     a join of children), `wait Step` (the step after a wait for a signal) or `Step`"
                ),
            ));
        }
        Ok(Successor {
            how: Some(first),
            step: input.parse()?,
        })
    }
}

impl quote::ToTokens for Successor {
    fn to_tokens(&self, tokens: &mut proc_macro2::TokenStream) {
        if let Some(how) = &self.how {
            how.to_tokens(tokens);
        }
        self.step.to_tokens(tokens);
    }
}

impl<'a> Machine<'a> {
    pub fn from_derive(input: &'a DeriveInput) -> syn::Result<Self> {
        let data = match &input.data {
            Data::Enum(data) => data,
            _ => {
                return Err(syn::Error::new_spanned(
                    &input.ident,
                    "#[derive(Machine)] works on an enum with one variant per step, \
                     like `enum Greeter { ReadName(ReadName), SayHello(SayHello) }`",
                ))
            }
        };
        if !input.generics.params.is_empty() {
            return Err(syn::Error::new_spanned(
                &input.generics,
                "a machine enum cannot be generic: its steps are stored by name",
            ));
        }
        let mut errors = Vec::new();
        let mut output = None;
        for attr in &input.attrs {
            if attr.path().is_ident("output") {
                match attr.parse_args::<Type>() {
                    Ok(ty) if output.is_none() => output = Some(ty),
                    Ok(_) => errors.push(syn::Error::new_spanned(
                        attr,
                        "a machine has one output type: remove the second `#[output(..)]`",
                    )),
                    Err(_) => errors.push(syn::Error::new_spanned(
                        attr,
                        "write the output type in parentheses: `#[output(Receipt)]`",
                    )),
                }
            }
        }
        let mut steps = Vec::new();
        for variant in &data.variants {
            let ty = match &variant.fields {
                Fields::Unnamed(fields) if fields.unnamed.len() == 1 => &fields.unnamed[0].ty,
                _ => {
                    errors.push(syn::Error::new_spanned(
                        variant,
                        format!(
                            "each variant of a machine wraps exactly one step struct: write `{0}({0})`",
                            variant.ident
                        ),
                    ));
                    continue;
                }
            };
            let (mut next, mut joins, mut waits) = (Vec::new(), Vec::new(), Vec::new());
            let mut initial = false;
            let mut aliases = Vec::new();
            for attr in &variant.attrs {
                if attr.path().is_ident("next") {
                    match parse_next(attr) {
                        Ok(entries) => {
                            for entry in entries {
                                let how = entry.how.as_ref().map(Ident::to_string);
                                let listed = |list: &Vec<Ident>| list.contains(&entry.step);
                                // A step reached both ways (`join X, wait X`) is one
                                // successor; the same entry twice is reported.
                                let again = match how.as_deref() {
                                    Some("join") => listed(&joins),
                                    Some(_) => listed(&waits),
                                    None => listed(&next) && !listed(&joins) && !listed(&waits),
                                };
                                match how.as_deref() {
                                    Some("join") => joins.push(entry.step.clone()),
                                    Some(_) => waits.push(entry.step.clone()),
                                    None => {}
                                }
                                if again || !listed(&next) {
                                    next.push(entry.step);
                                }
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                } else if attr.path().is_ident("initial") {
                    if let Err(e) = attr.meta.require_path_only() {
                        errors.push(e);
                    }
                    initial = true;
                } else if attr.path().is_ident("serde") {
                    if let Err(e) = parse_serde(attr, &mut aliases) {
                        errors.push(e);
                    }
                }
            }
            steps.push(StepVariant {
                variant: &variant.ident,
                ty,
                next,
                joins,
                waits,
                initial,
                aliases,
            });
        }
        Ok(Machine {
            ident: &input.ident,
            output,
            steps,
            errors,
        })
    }
}

/// Reads a variant's `#[serde(..)]`: its `alias`es are former names of the
/// step; a `rename` is refused, because the stored step and its `kind` are
/// named by the variant. Serde's other options are left to serde.
fn parse_serde(attr: &Attribute, aliases: &mut Vec<syn::LitStr>) -> syn::Result<()> {
    attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("alias") {
            aliases.push(meta.value()?.parse()?);
            return Ok(());
        }
        if meta.path.is_ident("rename") {
            return Err(meta.error(
                "a step is stored under its variant's name: rename the variant instead, \
                 and keep the old name readable with `#[serde(alias = \"Old\")]`",
            ));
        }
        // Anything else serde accepts: `key`, `key = value` or `key(..)`.
        if meta.input.peek(Token![=]) {
            meta.value()?.parse::<syn::Expr>()?;
        } else if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
            meta.input.parse::<proc_macro2::TokenTree>()?;
        }
        Ok(())
    })
}

fn parse_next(attr: &Attribute) -> syn::Result<Vec<Successor>> {
    let list = attr.meta.require_list().map_err(|_| {
        syn::Error::new_spanned(
            attr,
            "write the successors in parentheses: `#[next(StepA, StepB)]`",
        )
    })?;
    let names = list.parse_args_with(Punctuated::<Successor, Token![,]>::parse_terminated)?;
    if names.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "`#[next()]` names no step: list the successors, or remove it to make the step terminal",
        ));
    }
    Ok(names.into_iter().collect())
}

/// `task!(pub Greeter { ReadName => [SayHello], SayHello })`
pub struct TaskInput {
    pub vis: Visibility,
    pub ident: Ident,
    pub output: Option<Type>,
    pub steps: Vec<(Ident, Vec<Successor>)>,
}

impl Parse for TaskInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let vis = input.parse()?;
        let ident = input.parse()?;
        let output = if input.peek(Token![->]) {
            input.parse::<Token![->]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        let body;
        braced!(body in input);
        let mut steps = Vec::new();
        while !body.is_empty() {
            let step: Ident = body.parse()?;
            let mut next = Vec::new();
            if body.peek(Token![=>]) {
                body.parse::<Token![=>]>()?;
                let list;
                bracketed!(list in body);
                next = Punctuated::<Successor, Token![,]>::parse_terminated(&list)?
                    .into_iter()
                    .collect();
            }
            steps.push((step, next));
            if body.is_empty() {
                break;
            }
            body.parse::<Token![,]>()?;
        }
        if steps.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                "a task needs at least one step: `task!(Greeter { ReadName => [SayHello], SayHello })`",
            ));
        }
        Ok(TaskInput {
            vis,
            ident,
            output,
            steps,
        })
    }
}

/// `scheduler!(pub Tasks { Greeter, Billing })`
pub struct SchedulerInput {
    pub vis: Visibility,
    pub ident: Ident,
    pub machines: Vec<Ident>,
}

impl Parse for SchedulerInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let vis = input.parse()?;
        let ident = input.parse()?;
        let body;
        braced!(body in input);
        let machines = Punctuated::<Ident, Token![,]>::parse_terminated(&body)?
            .into_iter()
            .collect();
        Ok(SchedulerInput {
            vis,
            ident,
            machines,
        })
    }
}
