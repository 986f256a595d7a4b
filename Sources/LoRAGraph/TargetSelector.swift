/// Selects modules by name suffix, in PEFT's list semantics.
///
/// An entry matches a module whose name equals it or ends with `"." + entry` (a dot boundary:
/// `proj` does not match `q_proj`). The aliases `q k v o gate up down` stand for
/// `q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`; `all` matches every module.
public struct TargetSelector: Sendable, Equatable {
    /// The literal suffixes after alias expansion, in the order given, duplicates removed.
    public let suffixes: [String]
    /// True for `all`.
    public let matchesAll: Bool

    /// The short aliases and what they expand to.
    public static let aliases: [(alias: String, suffix: String)] = [
        ("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"),
        ("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj"),
    ]

    /// The seven projections of Llama-style blocks.
    public static let projections = TargetSelector(suffixes: aliases.map(\.suffix))

    private init(suffixes: [String]) {
        self.suffixes = suffixes
        matchesAll = false
    }

    /// Parses a comma- or space-separated list such as `q,v,c_attn`.
    /// - Throws: `GraphError.invalidPattern` for an empty list or an entry with empty segments.
    public init(parsing spec: String) throws {
        let words = spec.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
        guard !words.isEmpty else { throw GraphError.invalidPattern(spec, detail: "no module names given") }
        if words == ["all"] {
            suffixes = []
            matchesAll = true
            return
        }
        var out: [String] = []
        for w in words {
            guard !w.split(separator: ".", omittingEmptySubsequences: false).contains(where: \.isEmpty) else {
                throw GraphError.invalidPattern(w, detail: "empty name segment")
            }
            let s = TargetSelector.aliases.first { $0.alias == w }?.suffix ?? w
            if !out.contains(s) { out.append(s) }
        }
        suffixes = out
        matchesAll = false
    }

    /// Whether `module` is selected.
    public func matches(_ module: String) -> Bool {
        matchesAll || suffixes.contains { TargetSelector.suffixMatches(module, $0) }
    }

    /// `module == suffix` or `module` ends with `.suffix`.
    public static func suffixMatches(_ module: String, _ suffix: String) -> Bool {
        module == suffix || module.hasSuffix("." + suffix)
    }

    /// The shortest set of trailing name parts that selects exactly `modules` out of `all` (PEFT's
    /// minimal `target_modules`): for each module the shortest dot-boundary suffix matching no
    /// module outside the set, deduplicated and sorted.
    public static func minimalSuffixes(selecting modules: Set<String>, among all: Set<String>) -> [String] {
        let others = all.subtracting(modules)
        var result = Set<String>()
        for m in modules {
            let parts = m.split(separator: ".").map(String.init)
            var chosen = m
            for k in 1...max(1, parts.count) {
                let candidate = parts.suffix(k).joined(separator: ".")
                if !others.contains(where: { suffixMatches($0, candidate) }) {
                    chosen = candidate
                    break
                }
            }
            result.insert(chosen)
        }
        return result.sorted()
    }
}
