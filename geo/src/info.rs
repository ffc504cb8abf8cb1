//! What a loaded database says about itself.

/// Metadata of the loaded database, as reported by [`GeoDb::info`](crate::GeoDb::info).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbInfo {
    /// The database's own name for its kind, e.g. `GeoLite2-Country`.
    pub database_type: String,
    /// When the database was built, in seconds since the Unix epoch.
    pub build_epoch: u64,
    /// [`build_epoch`](Self::build_epoch) as an RFC 3339 UTC timestamp,
    /// e.g. `2026-06-17T19:00:00Z`.
    pub build_date: String,
    /// 4 for an IPv4-only database (IPv6 lookups then find nothing), 6 for one that covers
    /// both families.
    pub ip_version: u16,
}

impl DbInfo {
    pub(crate) fn from_metadata(metadata: &maxminddb::Metadata) -> DbInfo {
        DbInfo {
            database_type: metadata.database_type.clone(),
            build_epoch: metadata.build_epoch,
            build_date: rfc3339_utc(metadata.build_epoch),
            ip_version: metadata.ip_version,
        }
    }
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
///
/// Done by hand (civil-from-days, H. Hinnant) to keep a date library out of a crate that
/// needs one timestamp. Any `u64` is accepted; years past 9999 simply get more digits.
pub(crate) fn rfc3339_utc(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs_of_day = epoch % 86_400;
    let (hour, minute, second) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );

    // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era.
    // `days` is at most u64::MAX / 86400 (< 2^48), so none of this can overflow.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);

    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_table() {
        let cases: &[(u64, &str)] = &[
            (0, "1970-01-01T00:00:00Z"),
            (59, "1970-01-01T00:00:59Z"),
            (86_399, "1970-01-01T23:59:59Z"),
            (86_400, "1970-01-02T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (951_868_800, "2000-03-01T00:00:00Z"),
            (1_234_567_890, "2009-02-13T23:31:30Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (1_735_689_599, "2024-12-31T23:59:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (253_402_300_800, "10000-01-01T00:00:00Z"),
        ];
        for (epoch, expected) in cases {
            assert_eq!(rfc3339_utc(*epoch), *expected, "epoch {epoch}");
        }
        // The largest input formats without overflowing.
        assert!(rfc3339_utc(u64::MAX).ends_with('Z'));
    }
}
