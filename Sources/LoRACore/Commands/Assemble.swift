import Foundation
import SafeTensors

/// What `merge --assemble` did.
public struct AssembleReport: Sendable {
    public var output: String
    public var parts: Int
    /// The output's files in plan order (shards, then part 0's index and side files).
    public var files: [String]
    /// SHA-256 of each file, as its part computed it while writing.
    public var sha256: [String: String]
    public var bytes: Int
}

/// `merge --assemble OUT`: the parts of a partitioned merge (`merge --part I/N`) become the output.
///
/// Checks first, changes nothing until all pass: every part 0…N−1 committed, all with the same
/// plan fingerprint and shard list, every shard written by exactly one part, every listed file
/// present with its recorded size, the index present when there are several shards. Then the files
/// are hard-linked (renamed where the file system has no links) into an `AtomicOutput` staging
/// directory, which is committed under the final name, and the parts are removed. Re-running a part
/// or the assembly is safe at any point: nothing outside the parts directory changes before commit.
public enum Assemble {
    /// - Throws: `LoRACoreError.invalidRequest` listing every missing or inconsistent part;
    ///   `SafeTensorsError` for the output (exists, busy, I/O).
    public static func run(output path: String, force: Bool) throws -> AssembleReport {
        let parts = PartsDirectory(output: path)
        var manifests: [(dir: String, manifest: PartManifest)] = []
        for part in try parts.committedParts() {
            manifests.append((part.path, try PartManifest(contentsOf: part.path + "/" + PartManifest.fileName)))
        }
        guard let first = manifests.first?.manifest else {
            throw LoRACoreError.invalidRequest("\(path): no part has finished yet (\(parts.path) holds none)")
        }
        var problems: [String] = []
        let counts = Set(manifests.map(\.manifest.part.count))
        if counts.count > 1 {
            throw LoRACoreError.invalidRequest("\(path): parts of different splits are mixed: \(counts.sorted().map { "N=\($0)" }.joined(separator: ", ")) (remove the stale ones from \(parts.path))")
        }
        let present = Set(manifests.map(\.manifest.part.index))
        let missing = (0..<first.part.count).filter { !present.contains($0) }
        if !missing.isEmpty { problems.append("missing parts \(missing.map { "\($0)/\(first.part.count)" }.joined(separator: ", "))") }
        for (_, m) in manifests where m.fingerprint != first.fingerprint || m.shards != first.shards {
            problems.append("part \(m.part) was planned from other inputs or options than part \(first.part) (fingerprint \(m.fingerprint.prefix(12)) vs \(first.fingerprint.prefix(12)))")
        }
        var owner: [String: PartSelection] = [:]
        for (dir, m) in manifests {
            for f in m.files {
                if let other = owner[f.name] { problems.append("\(f.name) written by both part \(other) and part \(m.part)") }
                owner[f.name] = m.part
                var st = stat()
                if stat(dir + "/" + f.name, &st) != 0 || (st.st_mode & S_IFMT) != S_IFREG {
                    problems.append("part \(m.part): \(f.name) is missing")
                } else if Int(st.st_size) != f.bytes {
                    problems.append("part \(m.part): \(f.name) has \(st.st_size) bytes, its manifest says \(f.bytes)")
                }
                if m.part.index != 0 && !first.shards.contains(f.name) { problems.append("part \(m.part): \(f.name) is not a shard of the plan") }
            }
        }
        if missing.isEmpty {
            let unwritten = first.shards.filter { owner[$0] == nil }
            if !unwritten.isEmpty { problems.append("shards written by no part: \(unwritten.joined(separator: ", "))") }
            if first.shards.count > 1 && owner["model.safetensors.index.json"] == nil { problems.append("part 0 wrote no model.safetensors.index.json") }
        }
        guard problems.isEmpty else {
            throw LoRACoreError.invalidRequest("\(path): cannot assemble: " + problems.joined(separator: "; "))
        }

        let output = try AtomicOutput(destination: path, isDirectory: true, force: force)
        do {
            for (dir, m) in manifests.sorted(by: { $0.manifest.part.index < $1.manifest.part.index }) {
                for f in m.files {
                    let from = dir + "/" + f.name, to = output.path(for: f.name)
                    if link(from, to) != 0 && rename(from, to) != 0 {
                        throw SafeTensorsError.outputIO(path: to, operation: "link \(from)", errno: errno)
                    }
                }
            }
            try output.commit()
        } catch {
            output.abandon()
            throw error
        }
        try parts.remove()
        let shardSet = Set(first.shards)
        let all = manifests.flatMap(\.manifest.files)
        let ordered = first.shards + all.map(\.name).filter { !shardSet.contains($0) }
        return AssembleReport(output: path, parts: first.part.count, files: ordered,
                              sha256: Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0.sha256) }),
                              bytes: all.reduce(0) { $0 + $1.bytes })
    }
}
