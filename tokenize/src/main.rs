fn main() {
    eprintln!("error: the tokenize stage is not built yet");
    std::process::exit(2);
}
