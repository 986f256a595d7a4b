import Foundation
import SafeTensors
import Yams

/// A recipe: the commands of a job written down as data (YAML, or JSON, which YAML reads too), so a
/// CI script can check the exact composition into git and `lora-tool run` can replay it.
///
/// Layout: a `steps` list; each step maps one command name to its options, spelled as on the
/// command line without the leading `--`. A value is a string or number (`--key value`), `true`
/// (the flag `--key`; `false` leaves it out), or a list (the option repeated). The command's
/// positional argument (inspect's path, convert's and resize's adapter) is the key `input`.
/// ```yaml
/// steps:
///   - merge:
///       base: samples/tiny-llama
///       adapter: [samples/tiny-llama-lora]
///       dtype: bf16
///       output: /tmp/recipe-merged
///   - verify: {base: samples/tiny-llama, adapter: samples/tiny-llama-lora, merged: /tmp/recipe-merged}
/// ```
/// Key order is kept; unknown keys are refused by the command they are given to, by name.
public struct Recipe: Sendable, Equatable {
    /// One command and its options, in file order.
    public struct Step: Sendable, Equatable {
        public enum Value: Sendable, Equatable {
            case text(String)
            case flag(Bool)
            case list([String])
        }

        public var command: String
        public var options: [(key: String, value: Value)]

        public init(command: String, options: [(key: String, value: Value)]) {
            self.command = command
            self.options = options
        }

        public static func == (l: Step, r: Step) -> Bool {
            l.command == r.command && l.options.map(\.key) == r.options.map(\.key) && l.options.map(\.value) == r.options.map(\.value)
        }
    }

    public var steps: [Step]

    public init(steps: [Step]) { self.steps = steps }

    /// Reads a recipe file.
    /// - Throws: `LoRACoreError.invalidConfig` naming the file and the key or step at fault.
    public init(contentsOf path: String) throws {
        let bytes = try RegularFile.readAll(path, limit: 1 << 20)
        try self.init(text: String(decoding: bytes, as: UTF8.self), file: path)
    }

    /// Parses recipe text; `file` names it in errors.
    public init(text: String, file: String) throws {
        func bad(_ detail: String) -> LoRACoreError { .invalidConfig(file: file, detail: detail) }
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch { throw bad("not valid YAML: \(error)") }
        guard let mapping = root?.mapping else { throw bad("a recipe is a mapping with a 'steps' list") }
        for (key, _) in mapping where key.string != "steps" {
            throw bad("unknown key '\(key.string ?? "?")' (a recipe has only 'steps')")
        }
        guard let list = mapping["steps"]?.sequence, !list.isEmpty else { throw bad("'steps' must be a non-empty list") }
        steps = try list.enumerated().map { index, node in
            guard let step = node.mapping, step.count == 1, let (nameNode, body) = step.first, let command = nameNode.string else {
                throw bad("step \(index + 1) must map one command name to its options")
            }
            guard let options = body.mapping else { throw bad("step \(index + 1) (\(command)): options must be a mapping") }
            return Step(command: command, options: try options.map { keyNode, value in
                guard let key = keyNode.string, !key.isEmpty, !key.hasPrefix("-") else {
                    throw bad("step \(index + 1) (\(command)): option names are written without dashes")
                }
                return (key, try Recipe.value(value, key: key, step: index + 1, command: command, bad: bad))
            })
        }
    }

    private static func value(_ node: Node, key: String, step: Int, command: String, bad: (String) -> LoRACoreError) throws -> Step.Value {
        if let items = node.sequence {
            return .list(try items.map { item in
                guard let scalar = item.scalar else { throw bad("step \(step) (\(command)): '\(key)' must be a list of plain values") }
                return scalar.string
            })
        }
        guard let scalar = node.scalar else { throw bad("step \(step) (\(command)): '\(key)' must be a value or a list of values") }
        if scalar.style == .plain, let flag = Bool.construct(from: scalar) { return .flag(flag) }
        if scalar.style == .plain, scalar.string == "~" || scalar.string == "null" || scalar.string.isEmpty {
            throw bad("step \(step) (\(command)): '\(key)' has no value")
        }
        return .text(scalar.string)
    }

    /// The recipe as YAML, in the layout `init(text:file:)` reads.
    public var yaml: String {
        var out = "steps:\n"
        for step in steps {
            out += "  - \(step.command):\n"
            for (key, value) in step.options {
                switch value {
                case let .text(t): out += "      \(key): \(Recipe.quoted(t))\n"
                case let .flag(f): out += "      \(key): \(f)\n"
                case let .list(items): out += "      \(key): [" + items.map(Recipe.quoted).joined(separator: ", ") + "]\n"
                }
            }
        }
        return out
    }

    /// A YAML scalar that reads back as the same string (double-quoted with escapes).
    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += String(format: "\\x%02X", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
