//! Compile-time rules of machines, pinned with trybuild: each file under
//! `tests/ui/` is one mistake a user can make, with the message they get.

#[test]
fn ui() {
    // trybuild builds every dependency again, in a target of its own; without
    // debug info (which no compile error needs) that takes a third less time.
    std::env::set_var("CARGO_PROFILE_DEV_DEBUG", "false");
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/*.rs");
}
