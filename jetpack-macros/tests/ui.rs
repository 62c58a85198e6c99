//! Compile-time rules of machines, pinned with trybuild: each file under
//! `tests/ui/` is one mistake a user can make, with the message they get.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/*.rs");
}
