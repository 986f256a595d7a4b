import ArgumentParser
import LoRACore

/// `--rank R` or `--energy P [--max-rank M]`, as `extract` (SVD mode) and `resize` take them.
enum RankRule {
    /// The checks both commands make (exit 64 with usage).
    static func validate(rank: Int?, energy: Double?, maxRank: Int?) throws {
        guard (rank == nil) != (energy == nil) else { throw ValidationError("give exactly one of --rank and --energy") }
        if let rank, rank <= 0 { throw ValidationError("--rank must be positive") }
        if let energy, !(energy > 0 && energy <= 1) { throw ValidationError("--energy must be in (0, 1]") }
        if maxRank != nil && energy == nil { throw ValidationError("--max-rank goes with --energy") }
    }

    /// The rule, once `validate` has passed.
    static func rule(rank: Int?, energy: Double?, maxRank: Int?) -> ExtractSVDOptions.RankRule {
        rank.map { .fixed($0) } ?? .energy(energy!, maxRank: maxRank)
    }
}
