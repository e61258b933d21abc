//! The published hashed-address vectors (made by an independent Python implementation) hold.

use qis_crds::addressing::{canonical_form, hashed_address, vector_bucket};
use serde_json::Value;

/// Proves our SHA-256 address and context bucket agree with `testdata/hashed-addresses.json`.
#[test]
fn hashed_address_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/hashed-addresses.json"
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
    let vectors = doc["vectors"].as_array().expect("array");
    assert!(vectors.len() >= 5);
    for v in vectors {
        let s = |k: &str| v[k].as_str().expect(k).to_owned();
        if let Some(vec) = v.get("contextVector").and_then(Value::as_array) {
            let vec: Vec<f64> = vec.iter().filter_map(Value::as_f64).collect();
            let levels = u8::try_from(v["levels"].as_u64().expect("levels")).expect("u8");
            let dims = usize::try_from(v["dims"].as_u64().expect("dims")).expect("usize");
            assert_eq!(vector_bucket(&vec, levels, dims), s("bucket"));
        }
        assert_eq!(
            canonical_form(&s("domain"), &s("problemClass"), &s("bucket")),
            s("canonical")
        );
        assert_eq!(
            hashed_address(&s("prefix"), &s("domain"), &s("problemClass"), &s("bucket")),
            s("address"),
            "{v}"
        );
    }
}
