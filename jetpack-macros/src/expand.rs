//! Expansion: the validated model into tokens. Everything is named by absolute
//! path through `::jetpack::__private`, so users need no other dependency.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::{Machine, SchedulerInput, TaskInput};

pub fn machine(m: &Machine) -> TokenStream {
    let p = quote!(::jetpack::__private);
    let machine = m.ident;
    let machine_name = machine.to_string();
    let any_initial = m.steps.iter().any(|s| s.initial);
    let output = match &m.output {
        Some(ty) => quote!(#ty),
        None => quote!(()),
    };

    let step_names = m.steps.iter().map(|s| s.variant.to_string());
    let nodes = m.steps.iter().enumerate().map(|(i, s)| {
        let name = s.variant.to_string();
        let next = s.next.iter().map(|n| n.to_string());
        let joins = s.joins.iter().map(|n| n.to_string());
        let waits = s.waits.iter().map(|n| n.to_string());
        let initial = s.initial || (!any_initial && i == 0);
        let ty = s.ty;
        let concurrency = quote!(<#ty as #p::Step<#machine>>::CONCURRENCY);
        let rate = quote!(<#ty as #p::Step<#machine>>::RATE);
        let policy = quote!(#p::RetryPolicy::of::<#ty, #machine>());
        let priority = quote!(<#ty as #p::Step<#machine>>::PRIORITY);
        let aliases = &s.aliases;
        quote!((#name, &[#(#next),*], &[#(#joins),*], &[#(#waits),*], #initial, #concurrency, #rate, #policy, #priority, &[#(#aliases),*]))
    });
    let name_arms = m.steps.iter().map(|s| {
        let v = s.variant;
        let name = v.to_string();
        quote!(Self::#v(_) => #name)
    });
    let policy_arms = m.steps.iter().map(|s| {
        let (v, ty) = (s.variant, s.ty);
        quote!(Self::#v(_) => #p::RetryPolicy::of::<#ty, #machine>())
    });
    let priority_arms = m.steps.iter().map(|s| {
        let (v, ty) = (s.variant, s.ty);
        quote!(Self::#v(_) => <#ty as #p::Step<#machine>>::PRIORITY)
    });
    let scope_arms = m.steps.iter().map(|s| {
        let (v, ty) = (s.variant, s.ty);
        let name = v.to_string();
        quote!(Self::#v(step) => #p::limit_scope(
            #machine_name,
            #name,
            <#ty as #p::Step<#machine>>::CONCURRENCY.is_some()
                || <#ty as #p::Step<#machine>>::RATE.is_some(),
            || <#ty as #p::Step<#machine>>::limit_key(step),
        ))
    });
    let run_arms = m.steps.iter().map(|s| {
        let (v, ty) = (s.variant, s.ty);
        quote! {
            Self::#v(step) => ::std::boxed::Box::pin(async move {
                ::std::result::Result::Ok(#p::NextStep::into_parts(
                    <#ty as #p::Step<#machine>>::step(step, cx).await?,
                    cx,
                ))
            })
        }
    });
    let per_step = m.steps.iter().map(|s| {
        let machine_name = &machine_name;
        let (v, ty) = (s.variant, s.ty);
        let name = v.to_string();
        // `valid` checked that every successor names a variant.
        let next_tys: Vec<_> = s
            .next
            .iter()
            .filter_map(|n| m.steps.iter().find(|t| t.variant == n).map(|t| t.ty))
            .collect();
        let follows = next_tys
            .iter()
            .map(|next_ty| quote!(impl #p::Follows<#ty, #machine, (#(#next_tys,)*)> for #next_ty {}));
        let ty_of = |n: &syn::Ident| m.steps.iter().find(|t| t.variant == n).map(|t| t.ty);
        let joins = s.joins.iter().filter_map(ty_of).map(
            |next_ty| quote!(impl #p::Joins<#ty, #machine> for #next_ty {}),
        );
        let waits = s.waits.iter().filter_map(ty_of).map(
            |next_ty| quote!(impl #p::Awaits<#ty, #machine> for #next_ty {}),
        );
        quote! {
            impl #p::StepOf for #ty {
                type Machine = #machine;
                const NAME: &'static str = #name;
                type Successors = (#(#next_tys,)*);
            }
            impl #p::MemberOf<#machine> for #ty {}
            impl #p::TaskOf for #ty {
                type Machine = #machine;
            }
            impl ::std::convert::From<#ty> for #machine {
                fn from(step: #ty) -> Self {
                    Self::#v(step)
                }
            }
            impl #p::IntoTask for #ty {
                fn into_step_json(self) -> ::std::result::Result<::std::string::String, #p::serde_json::Error> {
                    #p::IntoTask::into_step_json(<#machine as ::std::convert::From<#ty>>::from(self))
                }
                fn kind(&self) -> (&'static str, &'static str) {
                    (#machine_name, #name)
                }
                fn priority(&self) -> u8 {
                    <#ty as #p::Step<#machine>>::PRIORITY
                }
                fn limit_scope(&self) -> ::std::result::Result<::std::option::Option<::std::string::String>, ::std::string::String> {
                    #p::limit_scope(
                        #machine_name,
                        #name,
                        <#ty as #p::Step<#machine>>::CONCURRENCY.is_some()
                            || <#ty as #p::Step<#machine>>::RATE.is_some(),
                        || <#ty as #p::Step<#machine>>::limit_key(self),
                    )
                }
            }
            const _: () = ::std::assert!(
                <#ty as #p::Step<#machine>>::PRIORITY <= #p::MAX_PRIORITY,
                "a step's PRIORITY must be 0 to 10",
            );
            const _: () = ::std::assert!(
                !::std::matches!(<#ty as #p::Step<#machine>>::CONCURRENCY, ::std::option::Option::Some(0)),
                "a step's CONCURRENCY must be None or at least Some(1)",
            );
            const _: () = ::std::assert!(
                #p::Rate::valid(<#ty as #p::Step<#machine>>::RATE),
                "a step's RATE must be None or a Rate with a count, period and burst above zero",
            );
            #(#follows)*
            #(#joins)*
            #(#waits)*
        }
    });

    quote! {
        const _: () = {
            impl #p::Machine for #machine {
                const NAME: &'static str = #machine_name;
                const STEPS: &'static [&'static str] = &[#(#step_names),*];
                type Output = #output;

                fn graph() -> #p::Graph {
                    #p::Graph::__new(#machine_name, &[#(#nodes),*])
                }

                fn step_name(&self) -> &'static str {
                    match self { #(#name_arms,)* }
                }

                fn policy(&self) -> #p::RetryPolicy {
                    match self { #(#policy_arms,)* }
                }

                fn run<'a>(
                    self,
                    cx: &'a #p::Context<'a>,
                ) -> #p::BoxFuture<'a, #p::MachineResult<Self>> {
                    match self { #(#run_arms,)* }
                }
            }

            impl #p::TaskOf for #machine {
                type Machine = Self;
            }

            impl #p::IntoTask for #machine {
                fn into_step_json(self) -> ::std::result::Result<::std::string::String, #p::serde_json::Error> {
                    #p::tagged_json(#machine_name, &self)
                }
                fn kind(&self) -> (&'static str, &'static str) {
                    (#machine_name, #p::Machine::step_name(self))
                }
                fn priority(&self) -> u8 {
                    match self { #(#priority_arms,)* }
                }
                fn limit_scope(&self) -> ::std::result::Result<::std::option::Option<::std::string::String>, ::std::string::String> {
                    match self { #(#scope_arms,)* }
                }
            }

            #(#per_step)*
        };
    }
}

pub fn task(t: &TaskInput) -> TokenStream {
    let p = quote!(::jetpack::__private);
    let (vis, ident) = (&t.vis, &t.ident);
    let output = t.output.as_ref().map(|ty| quote!(#[output(#ty)]));
    let variants = t.steps.iter().map(|(step, next)| {
        let next = (!next.is_empty()).then(|| quote!(#[next(#(#next),*)]));
        quote!(#next #step(#step))
    });
    quote! {
        #[derive(::std::fmt::Debug, #p::serde::Serialize, #p::serde::Deserialize, ::jetpack::Machine)]
        #[serde(crate = "::jetpack::__private::serde")]
        #output
        #vis enum #ident {
            #(#variants,)*
        }
    }
}

pub fn scheduler(s: &SchedulerInput) -> TokenStream {
    let p = quote!(::jetpack::__private);
    let (vis, ident) = (&s.vis, &s.ident);
    let ms = &s.machines;
    quote! {
        #[derive(::std::fmt::Debug, #p::serde::Serialize, #p::serde::Deserialize)]
        #[serde(crate = "::jetpack::__private::serde")]
        #vis enum #ident {
            #(#ms(#ms),)*
        }

        const _: () = {
            #(
                impl ::std::convert::From<#ms> for #ident {
                    fn from(machine: #ms) -> Self {
                        Self::#ms(machine)
                    }
                }
            )*

            impl #p::IntoTask for #ident {
                fn into_step_json(self) -> ::std::result::Result<::std::string::String, #p::serde_json::Error> {
                    #p::serde_json::to_string(&self)
                }
                fn kind(&self) -> (&'static str, &'static str) {
                    (#p::Scheduler::machine_name(self), #p::Scheduler::step_name(self))
                }
                fn priority(&self) -> u8 {
                    match self { #(Self::#ms(m) => #p::IntoTask::priority(m),)* }
                }
                fn limit_scope(&self) -> ::std::result::Result<::std::option::Option<::std::string::String>, ::std::string::String> {
                    match self { #(Self::#ms(m) => #p::IntoTask::limit_scope(m),)* }
                }
            }

            impl #p::Scheduler for #ident {
                fn graphs() -> ::std::vec::Vec<#p::Graph> {
                    ::std::vec![#(<#ms as #p::Machine>::graph()),*]
                }

                fn machine_name(&self) -> &'static str {
                    match self { #(Self::#ms(_) => <#ms as #p::Machine>::NAME,)* }
                }

                fn step_name(&self) -> &'static str {
                    match self { #(Self::#ms(m) => #p::Machine::step_name(m),)* }
                }

                fn policy(&self) -> #p::RetryPolicy {
                    match self { #(Self::#ms(m) => #p::Machine::policy(m),)* }
                }

                fn run<'a>(
                    self,
                    cx: &'a #p::Context<'a>,
                ) -> #p::BoxFuture<'a, #p::MachineResult<Self>> {
                    match self {
                        #(Self::#ms(m) => ::std::boxed::Box::pin(async move {
                            ::std::result::Result::Ok(
                                #p::Machine::run(m, cx).await?.map(|(next, at)| (Self::#ms(next), at)),
                            )
                        }),)*
                    }
                }
            }
        };
    }
}
