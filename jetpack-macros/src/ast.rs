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
    pub initial: bool,
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
            let mut next = Vec::new();
            let mut initial = false;
            for attr in &variant.attrs {
                if attr.path().is_ident("next") {
                    match parse_next(attr) {
                        Ok(mut names) => next.append(&mut names),
                        Err(e) => errors.push(e),
                    }
                } else if attr.path().is_ident("initial") {
                    if let Err(e) = attr.meta.require_path_only() {
                        errors.push(e);
                    }
                    initial = true;
                }
            }
            steps.push(StepVariant {
                variant: &variant.ident,
                ty,
                next,
                initial,
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

fn parse_next(attr: &Attribute) -> syn::Result<Vec<Ident>> {
    let list = attr.meta.require_list().map_err(|_| {
        syn::Error::new_spanned(
            attr,
            "write the successors in parentheses: `#[next(StepA, StepB)]`",
        )
    })?;
    let names = list.parse_args_with(Punctuated::<Ident, Token![,]>::parse_terminated)?;
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
    pub steps: Vec<(Ident, Vec<Ident>)>,
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
                next = Punctuated::<Ident, Token![,]>::parse_terminated(&list)?
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
