import Foundation
import SafeTensors

/// `merge --adapters-from LIST --output-template T`: one base, many adapters, each merged into its
/// own output, one after another in one process (the base's pages stay in the page cache between
/// merges when memory allows, so the base is read from the disk about once).
///
/// LIST is a text file with one adapter path per line (blank lines and lines starting with `#`
/// are skipped; paths are taken as written, relative to the working directory). Each output path is
/// T with `{name}` replaced by the adapter's name: its directory's (or file's, without
/// `.safetensors`) last path component. With a `PartSelection`, the adapters are dealt round-robin
/// over the parts (adapter i goes to part i mod N), so each worker of a job array takes its share.
public enum BatchMerge {
    /// One adapter of the batch and where it goes.
    public struct Job: Sendable, Equatable {
        public var adapter: String
        public var name: String
        public var output: String
    }

    /// The jobs of `list` under `template`, in list order; with `part`, only that part's.
    /// - Throws: `LoRACoreError.invalidRequest` for an unreadable or empty list, a template without
    ///   `{name}`, or two adapters with the same name (their outputs would collide).
    public static func jobs(list: String, template: String, part: PartSelection?) throws -> [Job] {
        guard template.contains("{name}") else {
            throw LoRACoreError.invalidRequest("--output-template '\(template)' has no {name}: every adapter would write the same output")
        }
        let text = String(decoding: try RegularFile.readAll(list, limit: 16 << 20), as: UTF8.self)
        let paths = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard !paths.isEmpty else { throw LoRACoreError.invalidRequest("\(list): lists no adapter (one path per line)") }
        var seen: [String: String] = [:]
        var all: [Job] = []
        for path in paths {
            var name = URL(fileURLWithPath: path).lastPathComponent
            if name.hasSuffix(".safetensors") { name = String(name.dropLast(".safetensors".count)) }
            guard !name.isEmpty, name != ".", name != ".." else { throw LoRACoreError.invalidRequest("\(list): '\(path)' has no name to put in {name}") }
            if let other = seen[name] {
                throw LoRACoreError.invalidRequest("\(list): '\(other)' and '\(path)' are both named '\(name)': their outputs would collide")
            }
            seen[name] = path
            all.append(Job(adapter: path, name: name, output: template.replacingOccurrences(of: "{name}", with: name)))
        }
        guard let part else { return all }
        let owner = PartSelection.assign(sizes: [Int](repeating: 1, count: all.count), parts: part.count)
        return all.indices.filter { owner[$0] == part.index }.map { all[$0] }
    }
}
