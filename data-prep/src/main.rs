fn main() {
    eprintln!("error: the data-prep stage is not built yet");
    std::process::exit(2);
}
