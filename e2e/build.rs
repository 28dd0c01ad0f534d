fn main() {
    // The target triple, which a stage's source identity covers: the identity test recomputes it.
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    println!("cargo::rustc-env=BUILD_TARGET={target}");
}
