import Foundation

/// Refuses outputs that would overwrite or nest with inputs, before any work is done.
enum PathSafety {
    /// Absolute, symlink-resolved path (of the deepest existing ancestor, for paths not yet created).
    static func canonical(_ path: String) -> String {
        var url = URL(fileURLWithPath: path).standardizedFileURL
        var tail: [String] = []
        while !FileManager.default.fileExists(atPath: url.path), url.path != "/" {
            tail.insert(url.lastPathComponent, at: 0)
            url.deleteLastPathComponent()
        }
        var resolved = url.resolvingSymlinksInPath().path
        for t in tail { resolved = (resolved as NSString).appendingPathComponent(t) }
        return resolved
    }

    /// - Throws: `LoRACoreError.invalidRequest` when `output` equals, is inside, or contains an input.
    static func checkOutput(_ output: String, inputs: [String]) throws {
        let out = canonical(output)
        for input in inputs {
            let inp = canonical(input)
            if out == inp {
                throw LoRACoreError.invalidRequest("output \(output) is the input \(input); inputs are never modified")
            }
            if out.hasPrefix(inp + "/") {
                throw LoRACoreError.invalidRequest("output \(output) is inside the input \(input)")
            }
            if inp.hasPrefix(out + "/") {
                throw LoRACoreError.invalidRequest("output \(output) contains the input \(input)")
            }
        }
    }
}
