import Foundation
import SafeTensors

/// The non-weight files of a model directory (config.json, tokenizer files, generation_config.json…)
/// carried into an output, always as contents.
///
/// A Hugging Face cache snapshot holds relative symbolic links into `../../blobs/`; copying the links
/// would leave them dangling in the output, so every side file is read through its link and written
/// as a new regular file. A link whose target is absolute and outside the model directory is copied
/// the same way, with a warning. Anything that is not a regular file (a FIFO, socket or device) is
/// refused by name before a byte is read; subdirectories and hidden files are not side files.
public enum SideFiles {
    /// config.json and other JSON side files are read whole; larger ones are refused.
    static let jsonLimit = 64 << 20

    /// Copies every side file of `dir` into `output`, updating config.json where the output differs:
    /// `dtype`/`torch_dtype` for a cast, `quantization_config` dropped for a dense model, or merged
    /// modules added to `llm_int8_skip_modules`.
    /// - Returns: the names copied (sorted) and warnings for the user.
    /// - Throws: `SafeTensorsError.unsupportedInput` for a side file that is not a regular file,
    ///   `.io` reading it, `.outputIO` writing its copy.
    static func copy(
        from dir: String, to output: AtomicOutput, dtype: OutputDType, dropQuantization: Bool = false, denseModules: [String] = [],
        layerSources: [Int]? = nil, subdirectory: String? = nil
    ) throws -> [String] {
        let folder = subdirectory.map { $0 + "/" } ?? ""
        var copied: [String] = []
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted(by: utf8Precedes)
        let modelDirectory = OutputPath.realPath(dir)
        for name in names where !name.hasSuffix(".safetensors") && !name.hasSuffix(".safetensors.zst")
            && !name.hasSuffix(".safetensors.index.json") && !name.hasPrefix(".") {
            let src = dir + "/" + name
            var st = stat()
            guard stat(src, &st) == 0 else {
                if lstat(src, &st) == 0 { throw SafeTensorsError.unsupportedInput(path: src, detail: "a symbolic link to nothing (dangling)") }
                continue
            }
            if (st.st_mode & S_IFMT) == S_IFDIR { continue }
            if Checkpoint.pickleExtensions.contains((name as NSString).pathExtension) { continue }
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: src), target.hasPrefix("/"),
               !OutputPath.realPath(src).hasPrefix(modelDirectory + "/") {
                output.notes.append("\(src) is a link to \(target), outside the model directory: copied its contents")
            }
            if name == "config.json", dtype.torchName != nil || dropQuantization || !denseModules.isEmpty || layerSources != nil,
               let root = try readJSON(src), case let .object(members) = root {
                let updated = replicatingLayers(members, sources: layerSources).filter { !(dropQuantization && $0.key == "quantization_config") }.map { kv -> (key: String, value: JSONValue) in
                    if let torchName = dtype.torchName, kv.key == "torch_dtype" || kv.key == "dtype" { return (kv.key, .string(torchName)) }
                    if kv.key == "quantization_config", !denseModules.isEmpty, case let .object(q) = kv.value {
                        // Merged weights were written dense: transformers must not wrap them as 4-bit.
                        let existing = (kv.value["llm_int8_skip_modules"]?.arrayValue ?? []).compactMap(\.stringValue)
                        let skip = JSONValue.array(Array(Set(existing + denseModules)).sorted().map { .string($0) })
                        var fields = q.filter { $0.key != "llm_int8_skip_modules" }
                        fields.append(("llm_int8_skip_modules", skip))
                        return (kv.key, .object(fields.sorted { $0.key < $1.key }))
                    }
                    return kv
                }
                try write(output.path(for: folder + name), bytes: Array((JSONWriter.pretty(.object(updated)) + "\n").utf8))
            } else {
                try copyContents(of: src, to: output.path(for: folder + name))
            }
            copied.append(name)
        }
        return copied
    }

    /// config.json's members for the layers `sources` lists (`LayerReplicationPass`): the new
    /// `num_hidden_layers`, and `layer_types` (one entry per layer) listed for the new layers.
    static func replicatingLayers(_ members: [(key: String, value: JSONValue)], sources: [Int]?) -> [(key: String, value: JSONValue)] {
        guard let sources else { return members }
        return members.map { kv in
            switch kv.key {
            case "num_hidden_layers": return (kv.key, .number(String(sources.count)))
            case "layer_types":
                guard let types = kv.value.arrayValue, sources.allSatisfy({ $0 < types.count }) else { return kv }
                return (kv.key, .array(sources.map { types[$0] }))
            default: return kv
            }
        }
    }

    /// The JSON in `path`, or nil when there is no such file.
    /// - Throws: `SafeTensorsError` for a non-regular or oversized file; `LoRACoreError.invalidConfig`
    ///   when it is not JSON (never ignored).
    static func readJSON(_ path: String) throws -> JSONValue? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let bytes = try RegularFile.readAll(path, limit: jsonLimit)
        do { return try JSONParser.parse(bytes) } catch {
            throw LoRACoreError.invalidConfig(file: path, detail: "not valid JSON: \(error)")
        }
    }

    /// Writes `bytes` as a new file at `path` (an output: errors say so).
    static func write(_ path: String, bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SafeTensorsError.outputIO(path: path, operation: "create", errno: errno) }
        defer { close(fd) }
        try writeAll(fd, bytes.withUnsafeBytes { $0 }, count: bytes.count, path: path)
    }

    /// Copies the contents of the regular file `source` (through any link) into a new file.
    static func copyContents(of source: String, to destination: String) throws {
        let input = try RegularFile.open(source)
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard output >= 0 else { throw SafeTensorsError.outputIO(path: destination, operation: "create", errno: errno) }
        defer { close(output) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: source, operation: "read", errno: errno)
            }
            if n == 0 { break }
            try buffer.withUnsafeBytes { try writeAll(output, $0, count: n, path: destination) }
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, count: Int, path: String) throws {
        var done = 0
        while done < count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.outputIO(path: path, operation: "write", errno: errno)
            }
            done += n
        }
    }
}
