//! IMEIs for the virtual modems of a line: 15 digits, `35` (a reporting body of real TACs),
//! six digits of the run, six of the board, and the Luhn check digit the 3GPP TS 23.003
//! IMEI carries.

/// `count` IMEIs for run `run` (0..=999999; 0 when identities repeat across runs), boards
/// numbered from 1.
pub fn imeis(run: u32, count: usize) -> impl Iterator<Item = String> {
    (1..=count as u32).map(move |n| {
        let body = format!("35{:06}{:06}", run % 1_000_000, n % 1_000_000);
        format!("{body}{}", luhn(&body))
    })
}

/// The Luhn check digit of `digits`.
fn luhn(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imeis_have_15_digits_and_a_valid_check_digit() {
        // A published example IMEI: 49015420323751 with check digit 8.
        assert_eq!(luhn("49015420323751"), 8);
        let v: Vec<String> = imeis(42, 2).collect();
        assert_eq!(v[0].len(), 15);
        assert!(v[0].starts_with("35000042000001"));
        assert_ne!(v[0], v[1]);
        assert_ne!(imeis(1, 1).next(), imeis(2, 1).next());
    }
}
