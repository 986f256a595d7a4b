import Foundation
import FuzzTargets
import Testing

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// Replays the committed fuzz corpus and every crash ever found (Fuzz/crashes) through the fuzz
/// target bodies: each input must be handled without a crash.
@Suite("Fuzz corpus and crash regressions")
struct FuzzCorpusTests {
    static let inputs: [String] = ["safetensors", "json", "names", "gguf", "image"].flatMap { target in
        ["corpus", "crashes"].flatMap { kind in
            ((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/Fuzz/\(kind)/\(target)")) ?? [])
                .filter { !$0.hasPrefix(".") }.sorted().map { "\(kind)/\(target)/\($0)" }
        }
    }

    @Test("Each corpus and crash input runs through its target", arguments: inputs)
    func replay(input: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(root)/Fuzz/\(input)"))
        data.withUnsafeBytes { bytes in
            switch input.split(separator: "/")[1] {
            case "safetensors": FuzzTargets.safetensors(bytes)
            case "json": FuzzTargets.json(bytes)
            case "gguf": FuzzTargets.gguf(bytes)
            case "image": FuzzTargets.imageLoRA(bytes)
            default: FuzzTargets.names(bytes)
            }
        }
    }

    @Test("The corpus is not empty")
    func nonEmpty() { #expect(Self.inputs.count >= 40) }
}
