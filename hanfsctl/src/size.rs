//! Sizes as people write them: `1Gi`, `500Mi`, `10G`, `4096`.

pub fn parse(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1Gi or 500Mi"))?;
    let factor: i64 = match unit {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {text:?} (use Ki, Mi, Gi, Ti, K, M, G, T)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

pub fn show(bytes: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, factor) in UNITS {
        if bytes >= factor {
            return format!("{:.1}{unit}", bytes as f64 / factor as f64);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(super::parse("1Gi"), Ok(1 << 30));
        assert_eq!(super::parse("500Mi"), Ok(500 << 20));
        assert_eq!(super::parse("10G"), Ok(10_000_000_000));
        assert_eq!(super::parse("4096"), Ok(4096));
        assert!(super::parse("1Pb").is_err());
        assert!(super::parse("Gi").is_err());
        assert!(super::parse("99999999999Ti").is_err());
        assert_eq!(super::show(3 << 29), "1.5Gi");
    }
}
