fn main() {
    // STAGE_IDENTITY: the stage's identity from the source it links (see source-identity).
    source_identity::emit();
}
