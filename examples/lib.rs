//! Examples of using apinode's library crates from another Rust program; the code is in this
//! folder's examples (`cargo run -p apinode-examples --example <name>`). This library is empty.
