//! README's table of the pipeline graph is the declaration's own (`graph::markdown_table`):
//! a change to the graph that README does not show fails here, with the table to paste.

use std::fs;
use std::path::Path;

#[test]
fn readme_shows_the_declared_graph() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = fs::read_to_string(&path).unwrap();
    let table = pipeline::graph::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md must hold the pipeline graph as declared in crates/pipeline/src/graph.rs; \
         replace its stage table with:\n\n{table}"
    );
}
