//! `cargo xtask`: the project's automation. Placeholder until the CI driver lands.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("usage: cargo xtask ci | lint | fmt")
}
