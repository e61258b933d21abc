//! The operator binary (the controller comes with its own issue).

fn main() {
    eprintln!(
        "qis-operator {}: the controller is not built yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
