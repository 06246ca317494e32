//! Attack tests of issue 22 ("the console under attack"), one binary so the skynet crates
//! are linked once. Each module is named by the attack it plays, and each test checks both
//! directions: the attack fails, and the legitimate use beside it still works. Tests wait
//! for conditions (a status code, a closed socket, a metric), never for a fixed time.

mod audit;
#[path = "../common/mod.rs"]
mod common;
mod files;
#[path = "../../crates/skynet-serve/tests/support/fixture.rs"]
mod fixture;
mod listeners;
mod logins;
mod openapi_fuzz;
mod scope;
mod sessions;
