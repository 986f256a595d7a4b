import Foundation

/// Parses sizes such as `500MB`, `5GB`, `2GiB`, `1.5GB` or `123456` (bytes).
///
/// Decimal units (KB, MB, GB, TB) are powers of 1000, as huggingface_hub's `parse_size_to_int`;
/// binary units (KiB, MiB, GiB, TiB) powers of 1024. Units are case-insensitive.
public enum ByteSize {
    /// The size in bytes, or nil for text that is not a positive size.
    public static func parse(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [
            ("kib", 1024), ("mib", 1_048_576), ("gib", 1_073_741_824), ("tib", 1_099_511_627_776),
            ("kb", 1e3), ("mb", 1e6), ("gb", 1e9), ("tb", 1e12), ("b", 1),
        ]
        let lower = t.lowercased()
        var number = lower
        var factor = 1.0
        for (suffix, f) in units where lower.hasSuffix(suffix) {
            number = String(lower.dropLast(suffix.count)).trimmingCharacters(in: .whitespaces)
            factor = f
            break
        }
        guard let v = Double(number), v.isFinite, v > 0, v * factor < 9.0e18 else { return nil }
        return Int(v * factor)
    }
}
