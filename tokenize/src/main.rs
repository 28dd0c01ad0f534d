fn main() {
    tokenize::cli::main(std::env::args_os());
}
