import Foundation

/// Part `index` (0-based) of `count` parts of a partitioned run: the workers of a job array each
/// write the output files the shared plan assigns to them.
///
/// The assignment is computed from file sizes alone (headers), so every worker computes the same
/// one whatever its core count: files in decreasing size (ties by plan order) each go to the part
/// with the fewest bytes so far (ties to the lowest index). Parts balance bytes, not file counts.
public struct PartSelection: Sendable, Equatable, CustomStringConvertible {
    public let index: Int
    public let count: Int

    /// - Throws: `LoRACoreError.invalidRequest` unless 0 ≤ index < count ≤ 100 000.
    public init(index: Int, count: Int) throws {
        guard count >= 1, count <= 100_000 else { throw LoRACoreError.invalidRequest("--part: the number of parts must be between 1 and 100000, not \(count)") }
        guard index >= 0, index < count else { throw LoRACoreError.invalidRequest("--part: part \(index) is not one of 0…\(count - 1) (parts are numbered from 0)") }
        self.index = index
        self.count = count
    }

    /// "I/N".
    public var description: String { "\(index)/\(count)" }

    /// Reads `I/N`, or `auto`: the index from the scheduler's environment, the count from `parts`
    /// or the environment.
    ///
    /// `auto` reads, in order: Slurm job arrays (`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`,
    /// so `--array=1-8` works; count `SLURM_ARRAY_TASK_COUNT` unless `parts` is given), then
    /// Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX`; the count must be given as `parts`, since
    /// Kubernetes does not export `completions`).
    /// - Throws: `LoRACoreError.invalidRequest` naming the text or variable at fault.
    public static func parse(_ text: String, parts: Int?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> PartSelection {
        if text == "auto" {
            func number(_ variable: String) throws -> Int? {
                guard let value = environment[variable] else { return nil }
                guard let n = Int(value), n >= 0 else { throw LoRACoreError.invalidRequest("--part auto: $\(variable) is '\(value)', not a whole number") }
                return n
            }
            if let id = try number("SLURM_ARRAY_TASK_ID") {
                let first = try number("SLURM_ARRAY_TASK_MIN") ?? 0
                guard let count = try parts ?? number("SLURM_ARRAY_TASK_COUNT") else {
                    throw LoRACoreError.invalidRequest("--part auto: $SLURM_ARRAY_TASK_COUNT is not set; give --parts N")
                }
                return try PartSelection(index: id - first, count: count)
            }
            if let id = try number("JOB_COMPLETION_INDEX") {
                guard let parts else { throw LoRACoreError.invalidRequest("--part auto with $JOB_COMPLETION_INDEX needs --parts N (the Job's completions)") }
                return try PartSelection(index: id, count: parts)
            }
            throw LoRACoreError.invalidRequest("--part auto: neither $SLURM_ARRAY_TASK_ID nor $JOB_COMPLETION_INDEX is set (not running in a Slurm array or an Indexed Job)")
        }
        let pieces = text.split(separator: "/", omittingEmptySubsequences: false)
        guard pieces.count == 2, let i = Int(pieces[0]), let n = Int(pieces[1]) else {
            throw LoRACoreError.invalidRequest("--part '\(text)' is not I/N (e.g. 0/4) or auto")
        }
        if let parts, parts != n { throw LoRACoreError.invalidRequest("--part \(text) and --parts \(parts) disagree") }
        return try PartSelection(index: i, count: n)
    }

    /// The part of each item, balancing `sizes` over `parts` (see the type's description).
    public static func assign(sizes: [Int], parts: Int) -> [Int] {
        var load = [Int](repeating: 0, count: parts)
        var owner = [Int](repeating: 0, count: sizes.count)
        for i in sizes.indices.sorted(by: { sizes[$0] != sizes[$1] ? sizes[$0] > sizes[$1] : $0 < $1 }) {
            let p = load.indices.min { load[$0] != load[$1] ? load[$0] < load[$1] : $0 < $1 }!
            owner[i] = p
            load[p] += sizes[i]
        }
        return owner
    }
}
