//! Writes the fuzzers' seed corpus into `fuzz/corpus/<target>/seed-<name>`:
//! `cargo run -p datalayer-core --example write_fuzz_seeds`. The files are committed.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, name, bytes) in datalayer_core::fuzz::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
