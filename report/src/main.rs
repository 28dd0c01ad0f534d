fn main() {
    report::cli::main(std::env::args_os());
}
