//! Numbers as people read them.

/// `20000` → `20,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let head = (digits.len() - 1) % 3 + 1;
    let mut out = digits[..head].to_string();
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("ASCII digits"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_separated() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (2_500, "2,500"),
            (22_713_216, "22,713,216"),
            (1_234_567, "1,234,567"),
        ];
        for (n, text) in cases {
            assert_eq!(super::thousands(n), text);
        }
    }
}
