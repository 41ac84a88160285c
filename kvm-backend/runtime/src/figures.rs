//! Small statistics shared by the reports (`demo`, `report-failover`, `bench`).

/// The `p` quantile of `values` (nearest rank on a sorted copy); NaN for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_by_nearest_rank() {
        let values = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(super::percentile(&values, 0.0), 1.0);
        assert_eq!(super::percentile(&values, 0.5), 3.0);
        assert_eq!(super::percentile(&values, 1.0), 5.0);
        assert!(super::percentile(&[], 0.5).is_nan());
    }
}
