//! Writes the CRD YAML of every kind where the project ships it: `crds/` (the source of
//! truth), `config/crd/bases/` (kustomize) and `charts/qis-operator/crds/` (Helm), and the
//! configuration reference `docs/crd-reference.md`. CI fails when any of them is stale.
//!
//! `cargo run -p qis-crds --bin crdgen` after changing a type; `crdgen DIR` writes the YAML
//! into DIR only.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dirs: Vec<PathBuf> = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let reference = root.join(qis_crds::crdgen::REFERENCE_FILE);
            std::fs::write(&reference, qis_crds::crdgen::reference())?;
            println!("wrote {}", reference.display());
            qis_crds::crdgen::OUTPUT_DIRS
                .iter()
                .map(|d| root.join(d))
                .collect()
        }
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, crd) in qis_crds::crdgen::all() {
            let path = dir.join(file);
            std::fs::write(&path, qis_crds::crdgen::render(&crd)?)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
