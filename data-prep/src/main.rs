fn main() {
    data_prep::cli::main(std::env::args_os());
}
