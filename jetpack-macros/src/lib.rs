//! Procedural macros for [Jetpack](https://docs.rs/jetpack). Use them through the
//! `jetpack` crate, which re-exports them and everything the generated code needs.
//!
//! - `#[derive(Machine)]` turns an enum of step structs into a state machine whose
//!   transitions (`#[next(..)]`) the compiler checks.
//! - `task!` declares the same enum from a compact list of steps and successors.
//! - `scheduler!` combines machines into the one enum a worker runs.
#![deny(missing_docs)]

extern crate proc_macro;

mod ast;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `jetpack::Machine` for an enum whose variants each wrap one step type.
///
/// `#[next(A, B)]` on a variant declares which steps may follow it; a variant with
/// no `#[next]` is terminal and can only finish. `#[initial]` marks the steps a task
/// normally starts with (the first variant when none is marked). `#[output(T)]`
/// on the enum declares what a finished task returns to a parent's join (`()`
/// when absent).
#[proc_macro_derive(Machine, attributes(next, initial, output))]
pub fn derive_machine(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    ast::Machine::from_derive(&input)
        .and_then(|m| valid::machine(&m).map(|()| m))
        .map(|m| expand::machine(&m))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares a machine enum from its steps and their successors:
/// `task!(pub Greeter { ReadName => [SayHello], SayHello })`; with an output
/// type, `task!(pub Payment -> Receipt { Charge })`.
///
/// Expands to an enum with one variant per step (named like the step type),
/// deriving `Debug`, `Serialize`, `Deserialize` and `Machine`.
#[proc_macro]
pub fn task(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as ast::TaskInput);
    expand::task(&input).into()
}

/// Combines machines into the enum a worker runs: `scheduler!(pub Tasks { Greeter, Billing })`.
///
/// The enum serializes as `{"Greeter":{"ReadName":{..}}}`, the form stored in the
/// task table.
#[proc_macro]
pub fn scheduler(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as ast::SchedulerInput);
    valid::scheduler(&input)
        .map(|()| expand::scheduler(&input))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
