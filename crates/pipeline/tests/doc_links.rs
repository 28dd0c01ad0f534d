//! README.md and every docs/**/*.md link only to what exists: each relative Markdown link and
//! image (`[text](path)`, `[text](path#anchor)`, `![alt](path)`, `[ref]: path`, `(#anchor)`)
//! names a file or folder of the repository, relative to the linking file's folder, and each
//! `#anchor` names a heading of the target Markdown file as GitHub makes its anchors (lowercase;
//! a space becomes '-'; punctuation other than '-' and '_' is dropped; a repeated heading gets
//! -1, -2, …). Links with a scheme (http, https, mailto, …) are not checked, nor anything inside
//! fenced code blocks, inline code or HTML comments.
//!
//! A failure lists every broken link as `file:line: link: why`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

#[test]
fn every_relative_link_in_readme_and_docs_resolves() {
    let root = repo_root();
    let files = markdown_files(&root);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "README.md not found under {}",
        root.display()
    );
    let problems = check(&root, &files);
    assert!(
        problems.is_empty(),
        "{} broken link(s) in README.md and docs/:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
}

/// README.md and every `.md` file under docs/, in a stable order.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    files
}

/// Every broken link of `files` (paths under `root`), as `file:line: link: why`.
fn check(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut anchors_of: HashMap<PathBuf, Vec<String>> = HashMap::new();
    let mut problems = Vec::new();
    for file in files {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", shown(root, file)));
                continue;
            }
        };
        for link in links(&text) {
            if let Err(why) = resolve(root, file, &link.dest, &mut anchors_of) {
                problems.push(format!(
                    "{}:{}: {}: {why}",
                    shown(root, file),
                    link.line,
                    link.source
                ));
            }
        }
    }
    problems
}

/// Checks one link destination of `file`; the error says why it does not resolve.
fn resolve(
    root: &Path,
    file: &Path,
    dest: &str,
    anchors_of: &mut HashMap<PathBuf, Vec<String>>,
) -> Result<(), String> {
    if dest.is_empty() {
        return Err("empty link".into());
    }
    if has_scheme(dest) {
        return Ok(()); // http(s), mailto and the like: not a file of this repository
    }
    let (path, anchor) = match dest.split_once('#') {
        Some((path, anchor)) => (path, Some(percent_decode(anchor))),
        None => (dest, None),
    };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let target = if path.is_empty() {
        file.to_path_buf()
    } else {
        let decoded = percent_decode(path);
        let joined = match decoded.strip_prefix('/') {
            Some(from_root) => root.join(from_root), // GitHub reads /x as the repository's x
            None => file.parent().unwrap().join(&decoded),
        };
        let target = normalize(&joined);
        if !target.starts_with(root) {
            return Err(format!("{decoded} points outside the repository"));
        }
        if !target.exists() {
            return Err(format!("{} does not exist", shown(root, &target)));
        }
        target
    };
    let Some(anchor) = anchor else {
        return Ok(());
    };
    if target.is_dir() {
        return Err(format!(
            "#{anchor}: {} is a folder, which has no anchors",
            shown(root, &target)
        ));
    }
    if !is_markdown(&target) {
        // GitHub's line anchors of a source file: #L12 or #L12-L20.
        let lines = fs::read_to_string(&target).map_or(0, |t| t.lines().count());
        return match line_anchor(&anchor) {
            Some((first, last)) if (1..=last).contains(&first) && last <= lines => Ok(()),
            Some(_) => Err(format!(
                "#{anchor}: {} has {lines} lines",
                shown(root, &target)
            )),
            None => Err(format!(
                "#{anchor}: {} is not Markdown, so only line anchors (#L12, #L12-L20) can be checked",
                shown(root, &target)
            )),
        };
    }
    let anchors = anchors_of.entry(target.clone()).or_insert_with(|| {
        fs::read_to_string(&target)
            .map(|t| heading_anchors(&t))
            .unwrap_or_default()
    });
    if anchors.contains(&anchor) {
        Ok(())
    } else {
        Err(format!(
            "no heading of {} has the anchor #{anchor} (its anchors: {})",
            shown(root, &target),
            anchors
                .iter()
                .map(|a| format!("#{a}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_markdown(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("md") || e.eq_ignore_ascii_case("markdown"))
}

/// `scheme:` as in `https:`, `mailto:` (a Windows drive letter is not expected here).
fn has_scheme(dest: &str) -> bool {
    let Some((scheme, _)) = dest.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
}

/// `L12` → (12, 12); `L12-L20` → (12, 20).
fn line_anchor(anchor: &str) -> Option<(usize, usize)> {
    let number = |s: &str| s.strip_prefix('L')?.parse::<usize>().ok();
    match anchor.split_once('-') {
        Some((a, b)) => Some((number(a)?, number(b)?)),
        None => number(anchor).map(|n| (n, n)),
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One link as written: its 1-based line, its source text and its destination.
#[derive(Debug, PartialEq)]
struct Link {
    line: usize,
    source: String,
    dest: String,
}

/// The file's lines with what is not rendered as text blanked: fenced code blocks (their fence
/// lines included) become empty lines, HTML comments spaces. Line numbers are kept.
fn prose_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    let mut in_comment = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let run = |c: char| trimmed.chars().take_while(|&x| x == c).count();
        if let Some((c, n)) = fence {
            if run(c) >= n && trimmed.trim_start_matches(c).trim().is_empty() {
                fence = None;
            }
            out.push(String::new());
            continue;
        }
        if !in_comment {
            if let Some(c) = ['`', '~'].into_iter().find(|&c| run(c) >= 3) {
                // A backtick fence's info string holds no backtick.
                if c == '~' || !trimmed.trim_start_matches('`').contains('`') {
                    fence = Some((c, run(c)));
                    out.push(String::new());
                    continue;
                }
            }
        }
        // HTML comments, which may span lines.
        let mut kept = String::new();
        let mut rest = line;
        loop {
            if in_comment {
                match rest.find("-->") {
                    Some(end) => {
                        kept.push_str(&" ".repeat(end + 3));
                        rest = &rest[end + 3..];
                        in_comment = false;
                    }
                    None => {
                        kept.push_str(&" ".repeat(rest.len()));
                        break;
                    }
                }
            } else {
                match rest.find("<!--") {
                    Some(start) => {
                        kept.push_str(&rest[..start]);
                        kept.push_str("    ");
                        rest = &rest[start + 4..];
                        in_comment = true;
                    }
                    None => {
                        kept.push_str(rest);
                        break;
                    }
                }
            }
        }
        out.push(kept);
    }
    out
}

/// Inline code spans replaced by spaces (their backticks too), newlines kept: a span is a run
/// of n backticks up to the next run of exactly n; an unmatched run is literal text.
fn blank_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = chars.clone();
    let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' || (i > 0 && chars[i - 1] == '\\') {
            i += 1;
            continue;
        }
        let n = run_at(i);
        let mut j = i + n;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let m = run_at(j);
                if m == n {
                    close = Some(j);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                for c in &mut out[i..j + n] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
                i = j + n;
            }
            None => i += n,
        }
    }
    out.into_iter().collect()
}

/// Every Markdown link and image of `text`, and every reference definition, outside code.
fn links(text: &str) -> Vec<Link> {
    let lines = prose_lines(text);
    let mut found = Vec::new();
    // Paragraphs (runs of non-blank lines): a code span may continue on the next line.
    let mut start = 0;
    while start < lines.len() {
        if lines[start].trim().is_empty() {
            start += 1;
            continue;
        }
        let mut end = start;
        while end < lines.len() && !lines[end].trim().is_empty() {
            end += 1;
        }
        let paragraph = blank_code_spans(&lines[start..end].join("\n"));
        inline_links(&paragraph, start + 1, &mut found);
        for (k, line) in paragraph.lines().enumerate() {
            if let Some(dest) = reference_definition(line) {
                found.push(Link {
                    line: start + 1 + k,
                    source: line.trim().to_string(),
                    dest,
                });
            }
        }
        start = end;
    }
    found.sort_by_key(|l| l.line);
    found
}

/// `[text](dest "title")` and `![alt](dest)` in a paragraph whose first line is `first_line`.
fn inline_links(paragraph: &str, first_line: usize, found: &mut Vec<Link>) {
    let chars: Vec<char> = paragraph.chars().collect();
    let mut i = 0;
    while i + 1 < chars.len() {
        if !(chars[i] == ']' && chars[i + 1] == '(') {
            i += 1;
            continue;
        }
        // The matching '[' before, brackets balanced.
        let mut depth = 0usize;
        let mut open = None;
        for k in (0..i).rev() {
            match chars[k] {
                ']' if !escaped(&chars, k) => depth += 1,
                '[' if !escaped(&chars, k) => {
                    if depth == 0 {
                        open = Some(k);
                        break;
                    }
                    depth -= 1;
                }
                _ => {}
            }
        }
        let Some(open) = open else {
            i += 1;
            continue;
        };
        let Some((dest, close)) = destination(&chars, i + 2) else {
            i += 1;
            continue;
        };
        let from = if open > 0 && chars[open - 1] == '!' {
            open - 1
        } else {
            open
        };
        let line = first_line + chars[..from].iter().filter(|&&c| c == '\n').count();
        let source: String = chars[from..=close].iter().collect();
        found.push(Link {
            line,
            source: source.split_whitespace().collect::<Vec<_>>().join(" "),
            dest,
        });
        i = close + 1;
    }
}

fn escaped(chars: &[char], k: usize) -> bool {
    k > 0 && chars[k - 1] == '\\'
}

/// The destination starting at `at` (just after `(`) and the index of the closing `)`:
/// `<dest>` or dest with balanced parentheses, then an optional title.
fn destination(chars: &[char], at: usize) -> Option<(String, usize)> {
    let mut i = at;
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    let mut dest = String::new();
    if chars.get(i) == Some(&'<') {
        i += 1;
        while i < chars.len() && chars[i] != '>' {
            if chars[i] == '\n' {
                return None;
            }
            dest.push(chars[i]);
            i += 1;
        }
        i += 1;
    } else {
        let mut depth = 0usize;
        while i < chars.len() && !chars[i].is_whitespace() {
            match chars[i] {
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                _ => {}
            }
            dest.push(chars[i]);
            i += 1;
        }
    }
    // An optional title, then ')'.
    while i < chars.len() && chars[i] != ')' {
        i += 1;
    }
    (i < chars.len()).then_some((dest, i))
}

/// `[label]: dest` at the start of a line (up to 3 spaces in).
fn reference_definition(line: &str) -> Option<String> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = line.trim_start().strip_prefix('[')?;
    let (label, after) = rest.split_once("]:")?;
    if label.is_empty() || label.contains('[') || label.contains(']') || label.starts_with('^') {
        return None;
    }
    let dest = after.split_whitespace().next()?;
    let dest = dest
        .strip_prefix('<')
        .and_then(|d| d.strip_suffix('>'))
        .unwrap_or(dest);
    Some(dest.to_string())
}

/// The anchors GitHub gives `text`'s headings (ATX `#` and setext `===`/`---`), in order, with
/// duplicates numbered, plus explicit `id="…"` / `name="…"` anchors of HTML tags.
fn heading_anchors(text: &str) -> Vec<String> {
    let lines = prose_lines(text);
    let mut headings = Vec::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let mut explicit = Vec::new();
    for line in &lines {
        explicit.extend(html_ids(line));
        let indent = line.len() - line.trim_start_matches(' ').len();
        let trimmed = line.trim();
        if indent <= 3 {
            if let Some(text) = atx_heading(trimmed) {
                headings.push(text);
                paragraph.clear();
                continue;
            }
            let underline = !trimmed.is_empty()
                && (trimmed.chars().all(|c| c == '=') || trimmed.chars().all(|c| c == '-'));
            if underline && !paragraph.is_empty() {
                headings.push(paragraph.join(" "));
                paragraph.clear();
                continue;
            }
        }
        if trimmed.is_empty() || !is_paragraph_line(trimmed) || indent > 3 {
            paragraph.clear();
        } else {
            paragraph.push(trimmed);
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    for heading in headings {
        let base = slug(&heading_text(&heading));
        let mut anchor = base.clone();
        while seen.contains(&anchor) {
            let n = counts.entry(base.clone()).or_insert(0);
            *n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor.clone());
        anchors.push(anchor);
    }
    anchors.extend(explicit);
    anchors
}

/// `## Title ##` → `Title`.
fn atx_heading(trimmed: &str) -> Option<String> {
    let level = trimmed.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &trimmed[level..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let mut text = rest.trim();
    // An optional closing sequence of #s, after a space.
    let closing = text.trim_end_matches('#');
    if closing.is_empty() || closing.ends_with(' ') {
        text = closing.trim_end();
    }
    Some(text.to_string())
}

/// Whether a line can continue a paragraph that a setext underline turns into a heading.
fn is_paragraph_line(trimmed: &str) -> bool {
    let list_item = (trimmed.starts_with(['-', '*', '+']) && trimmed[1..].starts_with([' ', '\t']))
        || trimmed
            .split_once(['.', ')'])
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    !(list_item || trimmed.starts_with(['|', '>', '<']))
}

/// `id="x"` and `name="x"` attributes of HTML tags on a line.
fn html_ids(line: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for attribute in [" id=\"", " name=\""] {
        let mut rest = line;
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            if let Some(end) = rest.find('"') {
                ids.push(rest[..end].to_string());
            }
        }
    }
    ids
}

/// A heading's text as rendered: code spans' backticks, emphasis stars, HTML tags, link
/// targets and backslash escapes gone.
fn heading_text(heading: &str) -> String {
    let chars: Vec<char> = heading.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() && chars[i + 1].is_ascii_punctuation() => {
                out.push(chars[i + 1]);
                i += 2;
            }
            '`' | '*' => i += 1,
            '!' if chars.get(i + 1) == Some(&'[') => i += 1,
            ']' if chars.get(i + 1) == Some(&'(') => {
                // [text](target): keep the text, drop the target.
                match destination(&chars, i + 2) {
                    Some((_, close)) => i = close + 1,
                    None => {
                        out.push(']');
                        i += 1;
                    }
                }
            }
            '[' | ']' => i += 1,
            '<' => match chars[i..].iter().position(|&c| c == '>') {
                Some(len)
                    if chars
                        .get(i + 1)
                        .is_some_and(|c| c.is_ascii_alphabetic() || *c == '/') =>
                {
                    i += len + 1
                }
                _ => {
                    out.push('<');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out.trim().to_string()
}

/// GitHub's anchor for a heading's text: lowercase, a space becomes '-', letters, digits, '-'
/// and '_' kept, everything else dropped.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.trim().chars() {
        if c == ' ' {
            out.push('-');
        } else if c.is_alphanumeric() || c == '-' || c == '_' {
            out.extend(c.to_lowercase());
        }
    }
    out
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(
        slug(&heading_text("Results (the real run)")),
        "results-the-real-run"
    );
    assert_eq!(
        slug(&heading_text("Configuration (`pipeline.yaml`)")),
        "configuration-pipelineyaml"
    );
    assert_eq!(
        slug(&heading_text(
            "Measured on an NVIDIA H100 80GB HBM3 (2026-11-27, driver 580.159.04, CUDA 13.0)"
        )),
        "measured-on-an-nvidia-h100-80gb-hbm3-2026-11-27-driver-58015904-cuda-130"
    );
    assert_eq!(
        slug(&heading_text("imdb-lora — LoRA fine-tuning, in Rust")),
        "imdb-lora--lora-fine-tuning-in-rust"
    );
    assert_eq!(
        slug(&heading_text(
            "See [the **docs**](docs/x.md) for snake_case"
        )),
        "see-the-docs-for-snake_case"
    );
    assert_eq!(
        slug(&heading_text("The code's identity")),
        "the-codes-identity"
    );
    assert_eq!(slug(&heading_text("Über straße")), "über-straße");
}

#[test]
fn duplicate_headings_are_numbered_and_code_is_not_a_heading() {
    let text = "# Intro\n\n## Notes\n\n```sh\n# not a heading\n```\n\n## Notes\n\nNotes\n-----\n\n\
                ## Notes-1\n\n<a id=\"custom\"></a>\n";
    assert_eq!(
        heading_anchors(text),
        [
            "intro",
            "notes",
            "notes-1",
            "notes-2",
            "notes-1-1",
            "custom"
        ]
    );
}

#[test]
fn links_outside_code_are_found_with_their_lines() {
    let text = "Intro [a](x.md) and ![img](pics/p.png \"title\") and `[not](code.md)`.\n\
                \n\
                ```\n[not](fenced.md)\n```\n\
                Two-line `code\n[not](span.md)` then [b](<y z.md#sec>) and [c](#here)\n\
                <!-- [not](comment.md) -->\n\
                [ref]: ../r.md\n\
                [d](https://example.com) [e](f(1).md)\n";
    let found: Vec<(usize, String)> = links(text).into_iter().map(|l| (l.line, l.dest)).collect();
    let expect = [
        (1, "x.md"),
        (1, "pics/p.png"),
        (7, "y z.md#sec"),
        (7, "#here"),
        (9, "../r.md"),
        (10, "https://example.com"),
        (10, "f(1).md"),
    ];
    assert_eq!(
        found,
        expect.map(|(l, d)| (l, d.to_string())).to_vec(),
        "{found:?}"
    );
}

#[test]
fn broken_links_are_reported_with_file_line_link_and_why() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    fs::create_dir_all(root.join("docs/results")).unwrap();
    fs::write(root.join("docs/results/p.png"), b"png").unwrap();
    fs::write(root.join("src.rs"), "a\nb\nc\n").unwrap();
    fs::write(
        root.join("README.md"),
        "# Top\n\n## Part one\n\n[ok](docs/page.md#details) [ok](#part-one) ![ok](docs/results/p.png)\n\
         [ok](src.rs#L2-L3) [ok](https://x.invalid/nothing)\n\
         [gone](docs/missing.md)\n\
         [bad anchor](docs/page.md#nothing)\n\
         [bad here](#part-two)\n\
         [out](../elsewhere.md) [line](src.rs#L9) [folder](docs/results#x)\n",
    )
    .unwrap();
    fs::write(
        root.join("docs/page.md"),
        "# Page\n\n[back](../README.md#top)\n\n## Details\n\n![moved](results/p.png) [old](docs/results/p.png)\n",
    )
    .unwrap();
    let files = markdown_files(&root);
    assert_eq!(files, [root.join("README.md"), root.join("docs/page.md")]);
    let problems = check(&root, &files);
    assert_eq!(
        problems,
        [
            "README.md:7: [gone](docs/missing.md): docs/missing.md does not exist",
            "README.md:8: [bad anchor](docs/page.md#nothing): no heading of docs/page.md has the \
             anchor #nothing (its anchors: #page, #details)",
            "README.md:9: [bad here](#part-two): no heading of README.md has the anchor #part-two \
             (its anchors: #top, #part-one)",
            "README.md:10: [out](../elsewhere.md): ../elsewhere.md points outside the repository",
            "README.md:10: [line](src.rs#L9): #L9: src.rs has 3 lines",
            "README.md:10: [folder](docs/results#x): #x: docs/results is a folder, which has no anchors",
            "docs/page.md:7: [old](docs/results/p.png): docs/docs/results/p.png does not exist",
        ]
    );
}
