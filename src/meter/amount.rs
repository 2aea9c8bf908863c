//! Exact fixed-point amounts: a metered value times 10^9, held in an `i128`.
//!
//! Sums of amounts are integer sums, so they are associative and commutative and any
//! arrival order of the same events yields identical counters (f64 addition would not).

use std::fmt;

/// Fixed-point scale: an [`Amount`] holds `value × 10^9`.
pub const AMOUNT_SCALE: i128 = 1_000_000_000;

/// Number of decimal places an [`Amount`] keeps.
pub const AMOUNT_DECIMALS: u32 = 9;

/// Largest accepted magnitude of one observed value: 10^20 (in units, 10^29).
pub const AMOUNT_MAGNITUDE_MAX_UNITS: i128 = 100_000_000_000_000_000_000 * AMOUNT_SCALE;

/// `value × 10^9`, exact.
///
/// Aggregated sums saturate at the `i128` range (about ±1.7 × 10^29 in value terms,
/// i.e. more than 1.7 billion events of the maximum magnitude 10^20); below that
/// bound every sum is exact and order-independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(pub i128);

/// Why a decimal text could not become an [`Amount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountParseError {
    /// Not a decimal number (`[+-]digits[.digits][e[+-]digits]`).
    Syntax,
    /// Magnitude above 10^20 after rounding to 9 decimals.
    OutOfRange,
    /// More fractional digits than an amount keeps (a non-zero digit past
    /// the 9th decimal): only [`Amount::parse_decimal_exact`] refuses these.
    TooPrecise,
}

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// Exact amount for an integer value.
    pub fn from_int(value: i64) -> Amount {
        Amount(i128::from(value) * AMOUNT_SCALE)
    }

    /// Addition used by aggregations: exact, saturating at the `i128` range.
    #[inline]
    pub fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// Parses decimal text exactly: `[+-]digits[.digits][(e|E)[+-]digits]`, where
    /// either the integer or the fraction part may be empty but not both.
    /// Digits beyond 9 decimal places are rounded half-to-even.
    pub fn parse_decimal(text: &str) -> Result<Amount, AmountParseError> {
        parse_decimal(text.as_bytes()).map(|(amount, _)| amount)
    }

    /// [`Amount::parse_decimal`] that refuses, rather than rounds, a value
    /// with a non-zero digit past the 9th decimal (`1e-10`, `0.0000000015`);
    /// trailing zeros (`1.5000000000`) are exact.
    pub fn parse_decimal_exact(text: &str) -> Result<Amount, AmountParseError> {
        match parse_decimal(text.as_bytes())? {
            (amount, true) => Ok(amount),
            (_, false) => Err(AmountParseError::TooPrecise),
        }
    }

    /// `self / divisor`, rounded half to even to the amount's precision.
    ///
    /// # Panics
    /// If `divisor` is 0.
    pub fn div_round_half_even(self, divisor: u64) -> Amount {
        let d = i128::from(divisor);
        let (q, r) = (self.0 / d, self.0 % d);
        // |r| < d, so 2|r| cannot overflow; compare it with d.
        let twice = 2 * r.unsigned_abs();
        let away = match twice.cmp(&d.unsigned_abs()) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => q % 2 != 0,
            std::cmp::Ordering::Less => false,
        };
        match (away, self.0 < 0) {
            (false, _) => Amount(q),
            (true, false) => Amount(q + 1),
            (true, true) => Amount(q - 1),
        }
    }

    /// Nearest `f64` (correctly rounded for |value| < 2^53 × 10^-9, and via the exact
    /// decimal text above that).
    pub fn to_f64(self) -> f64 {
        const EXACT_F64_INT: i128 = 1 << 53;
        if self.0.abs() < EXACT_F64_INT {
            // Both operands are exact in f64, so the one division rounds correctly.
            self.0 as f64 / AMOUNT_SCALE as f64
        } else {
            self.to_string().parse().unwrap_or(f64::NAN)
        }
    }
}

impl fmt::Display for Amount {
    /// Exact decimal, trailing fractional zeros trimmed: `12.5`, `-0.000000001`, `100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = self.0.unsigned_abs();
        let scale = AMOUNT_SCALE as u128;
        let (int_part, frac_part) = (magnitude / scale, magnitude % scale);
        let sign = if self.0 < 0 { "-" } else { "" };
        if frac_part == 0 {
            return write!(f, "{sign}{int_part}");
        }
        let mut frac = frac_part;
        let mut width = AMOUNT_DECIMALS as usize;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        write!(f, "{sign}{int_part}.{frac:0width$}")
    }
}

/// The amount, and whether it is exact (no non-zero digit was rounded off).
fn parse_decimal(s: &[u8]) -> Result<(Amount, bool), AmountParseError> {
    let mut pos = 0;
    let negative = match s.first() {
        Some(b'-') => {
            pos += 1;
            true
        }
        Some(b'+') => {
            pos += 1;
            false
        }
        _ => false,
    };
    let int_start = pos;
    while pos < s.len() && s[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_digits = &s[int_start..pos];
    let mut frac_digits: &[u8] = &[];
    if pos < s.len() && s[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < s.len() && s[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_digits = &s[frac_start..pos];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(AmountParseError::Syntax);
    }
    let mut exponent: i64 = 0;
    if pos < s.len() && (s[pos] == b'e' || s[pos] == b'E') {
        pos += 1;
        let exp_negative = match s.get(pos) {
            Some(b'-') => {
                pos += 1;
                true
            }
            Some(b'+') => {
                pos += 1;
                false
            }
            _ => false,
        };
        let exp_start = pos;
        while pos < s.len() && s[pos].is_ascii_digit() {
            // Saturate far beyond any meaningful exponent; the sign of the excess is
            // all that matters (overflow or zero).
            exponent = (exponent * 10 + i64::from(s[pos] - b'0')).min(1_000_000_000_000);
            pos += 1;
        }
        if pos == exp_start {
            return Err(AmountParseError::Syntax);
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if pos != s.len() {
        return Err(AmountParseError::Syntax);
    }
    let (units, exact) = scale_digits(int_digits, frac_digits, exponent)?;
    Ok((Amount(if negative { -units } else { units }), exact))
}

/// Rounds `int_digits.frac_digits × 10^exponent × 10^9` half-to-even to an integer and
/// checks the magnitude bound; also says whether no non-zero digit was rounded off.
fn scale_digits(
    int_digits: &[u8],
    frac_digits: &[u8],
    exponent: i64,
) -> Result<(i128, bool), AmountParseError> {
    let digit_count = int_digits.len() + frac_digits.len();
    let digit_at = |i: usize| -> u8 {
        if i < int_digits.len() {
            int_digits[i] - b'0'
        } else {
            frac_digits[i - int_digits.len()] - b'0'
        }
    };
    // Digits with index < kept_count have weight 10^k with k >= 0 in units.
    let kept_count = int_digits.len() as i64 + exponent + i64::from(AMOUNT_DECIMALS);
    let kept_in_text = kept_count.clamp(0, digit_count as i64) as usize;
    let mut units: i128 = 0;
    for i in 0..kept_in_text {
        units = units * 10 + i128::from(digit_at(i));
        if units > AMOUNT_MAGNITUDE_MAX_UNITS {
            return Err(AmountParseError::OutOfRange);
        }
    }
    if kept_count >= digit_count as i64 {
        if units != 0 {
            let zeros = kept_count - digit_count as i64;
            for _ in 0..zeros {
                units *= 10;
                if units > AMOUNT_MAGNITUDE_MAX_UNITS {
                    return Err(AmountParseError::OutOfRange);
                }
            }
        }
        return Ok((units, true));
    }
    let dropped_from = kept_count.max(0) as usize;
    let exact = (dropped_from..digit_count).all(|i| digit_at(i) == 0);
    // Round half to even on the dropped digits.
    let (round_digit, sticky) = if kept_count < 0 {
        (0, false)
    } else {
        let first_dropped = kept_in_text;
        let sticky = (first_dropped + 1..digit_count).any(|i| digit_at(i) != 0);
        (digit_at(first_dropped), sticky)
    };
    if round_digit > 5 || (round_digit == 5 && (sticky || units % 2 == 1)) {
        units += 1;
    }
    if units > AMOUNT_MAGNITUDE_MAX_UNITS {
        return Err(AmountParseError::OutOfRange);
    }
    Ok((units, exact))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount(text: &str) -> Amount {
        Amount::parse_decimal(text).unwrap()
    }

    #[test]
    fn tenths_add_exactly() {
        assert_eq!(amount("0.1").saturating_add(amount("0.2")), amount("0.3"));
        assert_eq!(amount("0.3").to_string(), "0.3");
        assert_eq!(amount("0.3").to_f64(), 0.3);
    }

    #[test]
    fn exponents_and_signs_parse_exactly() {
        assert_eq!(amount("1e3"), Amount(1000 * AMOUNT_SCALE));
        assert_eq!(amount("2.5E-4"), Amount(250_000));
        assert_eq!(amount("-12.5"), Amount(-12_500_000_000));
        assert_eq!(amount("+7"), Amount::from_int(7));
        assert_eq!(amount(".5"), Amount(500_000_000));
        assert_eq!(amount("5."), Amount::from_int(5));
        assert_eq!(amount("-0"), Amount::ZERO);
        assert_eq!(amount("0e999999999999999999"), Amount::ZERO);
        assert_eq!(amount("1e-999999999999999999"), Amount::ZERO);
        assert_eq!(amount("0.000000001"), Amount(1));
        assert_eq!(amount("1.0e-9"), Amount(1));
    }

    #[test]
    fn exact_parse_refuses_only_digits_that_rounding_would_change() {
        let exact = Amount::parse_decimal_exact;
        for refused in [
            "1e-10",
            "0.0000000015",
            "12345678901.4234567891",
            "-0.00000000001",
            "25e-10",
        ] {
            assert_eq!(
                exact(refused),
                Err(AmountParseError::TooPrecise),
                "{refused}"
            );
        }
        for (text, units) in [
            ("0.000000001", 1),
            ("1.5000000000000", 1_500_000_000),
            ("1e-9", 1),
            ("1234567.123456789", 1_234_567_123_456_789),
            ("0.00000000000e5", 0),
            ("20e-10", 2),
        ] {
            assert_eq!(exact(text), Ok(Amount(units)), "{text}");
        }
        assert_eq!(exact("1e400"), Err(AmountParseError::OutOfRange));
    }

    #[test]
    fn division_rounds_half_to_even_at_the_ninth_decimal() {
        let div = |text: &str, by| Amount::div_round_half_even(amount(text), by).to_string();
        assert_eq!(div("1", 3), "0.333333333");
        assert_eq!(div("2", 3), "0.666666667");
        assert_eq!(div("-2", 3), "-0.666666667");
        assert_eq!(div("0.000000005", 2), "0.000000002");
        assert_eq!(div("0.000000007", 2), "0.000000004");
        assert_eq!(div("-0.000000005", 2), "-0.000000002");
        assert_eq!(div("12345678901.423456789", 1), "12345678901.423456789");
        assert_eq!(div("7.5", 3), "2.5");
    }

    #[test]
    fn tenth_decimal_rounds_half_to_even() {
        assert_eq!(amount("0.0000000005"), Amount(0));
        assert_eq!(amount("0.0000000015"), Amount(2));
        assert_eq!(amount("0.0000000025"), Amount(2));
        assert_eq!(amount("0.00000000250000001"), Amount(3));
        assert_eq!(amount("0.0000000024999"), Amount(2));
        assert_eq!(amount("-0.0000000015"), Amount(-2));
        assert_eq!(amount("5e-10"), Amount(0));
        assert_eq!(amount("6e-10"), Amount(1));
        assert_eq!(amount("6e-11"), Amount(0));
    }

    #[test]
    fn magnitude_above_1e20_is_out_of_range() {
        assert_eq!(amount("1e20"), Amount(AMOUNT_MAGNITUDE_MAX_UNITS));
        assert_eq!(
            amount("-100000000000000000000"),
            Amount(-AMOUNT_MAGNITUDE_MAX_UNITS)
        );
        for text in [
            "100000000000000000000.000000001",
            "1e21",
            "1e999999999999999999999",
            "-123456789012345678901",
            "99999999999999999999999999999999999999999999",
        ] {
            assert_eq!(
                Amount::parse_decimal(text),
                Err(AmountParseError::OutOfRange),
                "{text}"
            );
        }
    }

    #[test]
    fn non_decimal_text_is_a_syntax_error() {
        for text in [
            "", "-", "+", ".", "e5", "1e", "1e+", "abc", "1.2.3", " 1", "1 ", "NaN", "inf", "0x10",
            "1_000", "--1",
        ] {
            assert_eq!(
                Amount::parse_decimal(text),
                Err(AmountParseError::Syntax),
                "{text:?}"
            );
        }
    }

    #[test]
    fn display_trims_trailing_zeros() {
        assert_eq!(Amount(12_500_000_000).to_string(), "12.5");
        assert_eq!(Amount(-1).to_string(), "-0.000000001");
        assert_eq!(Amount::from_int(100).to_string(), "100");
        assert_eq!(Amount(-500_000_000).to_string(), "-0.5");
        assert_eq!(Amount::ZERO.to_string(), "0");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decimals_with_at_most_nine_places_parse_exactly(
            int_part in 0u64..100_000_000_000,
            frac in 0u32..1_000_000_000,
            places in 0usize..=9,
            negative in any::<bool>(),
        ) {
            let frac = u64::from(frac) % 10u64.pow(places as u32);
            let text = if places == 0 {
                format!("{}{int_part}", if negative { "-" } else { "" })
            } else {
                format!("{}{int_part}.{frac:0places$}", if negative { "-" } else { "" })
            };
            let expected_magnitude = i128::from(int_part) * AMOUNT_SCALE
                + i128::from(frac) * 10i128.pow(9 - places as u32);
            let expected = if negative { -expected_magnitude } else { expected_magnitude };
            prop_assert_eq!(Amount::parse_decimal(&text), Ok(Amount(expected)));
        }

        #[test]
        fn display_round_trips(units in -AMOUNT_MAGNITUDE_MAX_UNITS..=AMOUNT_MAGNITUDE_MAX_UNITS) {
            let text = Amount(units).to_string();
            prop_assert_eq!(Amount::parse_decimal(&text), Ok(Amount(units)));
        }

        #[test]
        fn exponent_form_equals_plain_form(mantissa in -1_000_000_000i64..1_000_000_000, shift in -9i32..=9) {
            // mantissa × 10^shift written with an exponent and written out plainly.
            let with_exponent = format!("{mantissa}e{shift}");
            let plain = Amount(i128::from(mantissa) * 10i128.pow((9 + shift) as u32));
            prop_assert_eq!(Amount::parse_decimal(&with_exponent), Ok(plain));
        }

        #[test]
        fn f64_rendering_of_short_decimals_is_exact(units in -1_000_000_000_000_000i64..1_000_000_000_000_000) {
            // A decimal with <= 9 places and <= 15 significant digits survives f64 +
            // shortest round-trip printing (serde_json's path), so parsing is exact.
            let exact = Amount(i128::from(units));
            let via_f64 = serde_json::Number::from_f64(exact.to_string().parse::<f64>().unwrap())
                .unwrap()
                .to_string();
            prop_assert_eq!(Amount::parse_decimal(&via_f64), Ok(exact));
        }
    }
}
