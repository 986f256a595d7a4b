import Foundation
import SafeTensors
import LoRACore

/// Small text helpers shared by the subcommands' renderers.
enum Render {
    /// `text` with every control or format character (C0, DEL, C1, bidi overrides, zero-width
    /// characters…) written as `\u{XX}`: names and metadata come from files and must not be able to
    /// move the cursor, recolour, retitle or reorder what a terminal shows.
    static func escaped(_ text: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            switch scalar.properties.generalCategory {
            case .control, .format, .lineSeparator, .paragraphSeparator, .unassigned, .privateUse, .surrogate:
                out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// 1234567 → "1.23 MB" (decimal units).
    static func bytes(_ n: Int) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var v = Double(n), u = 0
        while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
        return u == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[u])
    }

    /// 1234567 → "1.23 M".
    static func count(_ n: Int) -> String {
        if n < 1000 { return "\(n)" }
        let units = ["", "K", "M", "B", "T"]
        var v = Double(n), u = 0
        while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
        return String(format: "%.2f %@", v, units[u])
    }

    /// Shortest round-tripping decimal of a Double ("2", "0.5", "1.4142135623730951").
    static func number(_ x: Double) -> String {
        if x == x.rounded(), abs(x) < 1e15 { return String(Int(x)) }
        return "\(x)"
    }

    /// A JSON number literal for `x` (non-finite values become null).
    static func json(_ x: Double) -> JSONValue { x.isFinite ? .number(number(x)) : .null }
    static func json(_ n: Int) -> JSONValue { .number(String(n)) }
    static func json(_ s: String) -> JSONValue { .string(s) }
    static func json(_ strings: [String]) -> JSONValue { .array(strings.map { .string($0) }) }

    /// One diagnostic line on stderr (`warning: …`, `note: …`), escaped as a whole.
    static func diagnostic(_ line: String) {
        FileHandle.standardError.write(Data((escaped(line) + "\n").utf8))
    }

    /// Left-aligned columns; every cell escaped (`escaped`), since names come from files.
    static func table(_ rows: [[String]]) -> String {
        let rows = rows.map { $0.map(escaped) }
        guard let width = rows.map(\.count).max() else { return "" }
        var widths = [Int](repeating: 0, count: width)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }.joined(separator: "\n")
    }

    static func printJSON(_ value: JSONValue) {
        print(JSONWriter.pretty(value))
    }

    /// The table of modules factored by SVD (extract, convert --to lora): rank, energy kept,
    /// relative error, method.
    static func svdModules(_ modules: [ExtractSVDReport.Module]) -> [[String]] {
        [["  module", "rank", "energy kept", "rel. error", "method"]]
            + modules.map { ["  " + $0.module, "\($0.rank)", String(format: "%.6f", $0.energyKept), String(format: "%.3g", $0.relativeError), $0.method] }
    }
}
