fn main() {
    // Before any thread starts: allocator and thread-pool settings for the CPU kernels.
    lora_classifier::tune_cpu_runtime();
    evaluate::cli::main(std::env::args_os());
}
