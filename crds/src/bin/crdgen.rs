//! Writes the CRD YAML of every kind into a directory (default: the `crds/` folder).
//!
//! `cargo run -p qis-crds --bin crdgen` after changing a type; CI fails when the files are stale.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for (file, crd) in qis_crds::crdgen::all() {
        let path = dir.join(file);
        std::fs::write(&path, qis_crds::crdgen::render(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
