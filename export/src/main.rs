fn main() {
    export::cli::main(std::env::args_os());
}
