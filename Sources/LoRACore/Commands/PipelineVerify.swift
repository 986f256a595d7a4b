import Foundation
import LoRAGraph
import SafeTensors

/// `verify` of a merged diffusers pipeline folder against its base pipeline and adapters: each
/// component with weights is checked as `Verify` checks a model directory, with the adapter modules
/// that target it (a component no module targets and whose files are byte for byte the base's
/// passes as copied); top-level files and folders without weights must be byte for byte the base's.
/// Entries and files are named `<component>/<tensor or file>`, so a failure names the component.
public enum PipelineVerify {
    /// Runs the checks.
    /// - Returns: the report of every component, its entries and files prefixed by the component.
    /// - Throws: `LoRACoreError.invalidRequest` when the merged path is not a pipeline folder or
    ///   `--part` is given; everything `Verify.run` throws for a component.
    public static func run(_ options: VerifyOptions) throws -> VerifyReport {
        guard options.part == nil, options.mergedShards == nil else {
            throw LoRACoreError.invalidRequest("--part does not apply to a diffusers pipeline (\(options.base)); verify a component folder instead")
        }
        guard DiffusersPipeline.isPipeline(options.merged) else {
            throw LoRACoreError.invalidRequest("\(options.merged) is not a diffusers pipeline folder (no model_index.json), and the base \(options.base) is")
        }
        let base = try DiffusersPipeline(path: options.base), merged = try DiffusersPipeline(path: options.merged)
        let adapters = try DiffusersComponent.openAdapters(options.adapters, scale: options.scaleOverride, pipeline: base)
        let seed = options.seed ?? UInt64.random(in: .min ... .max)
        var entries: [VerifyReport.Entry] = []
        var files = compareFiles(base.files, merged.files, base: options.base, merged: options.merged, folder: nil)
        var probesSkipped: [String] = []
        for folder in base.folders {
            guard let other = merged.folders.first(where: { $0.name == folder.name }) else {
                files.append(.init(file: folder.name + "/", status: .missing, detail: "missing from the merged pipeline (the base has it)"))
                continue
            }
            let targeted = adapters.contains { a in
                a.modules.contains { DiffusersComponent.component(of: $0.module, in: a.format, available: base.weightComponents) == folder.name }
            }
            let copies = compareFiles(folder.files, other.files, base: options.base, merged: options.merged, folder: folder.name)
            guard folder.hasWeights, targeted || !copies.allSatisfy(\.passed) else {
                files += copies
                continue
            }
            var o = options
            o.base = options.base + "/" + folder.name
            o.merged = options.merged + "/" + folder.name
            o.seed = seed
            o.pipelineComponents = base.weightComponents
            let report = try Verify.run(o)
            entries += report.entries.map { e in
                var e = e
                e.tensor = folder.name + "/" + e.tensor
                return e
            }
            files += report.files.map { f in
                var f = f
                f.file = folder.name + "/" + f.file
                return f
            }
            if let why = report.sideFilesSkipped { files.append(.init(file: folder.name + "/", status: .differs, detail: why)) }
            if let why = report.probesSkipped { probesSkipped.append("\(folder.name): \(why)") }
        }
        for folder in merged.folders where !base.folders.contains(where: { $0.name == folder.name }) {
            files.append(.init(file: folder.name + "/", status: .extra, detail: "in the merged pipeline but not in the base"))
        }
        var report = VerifyReport(entries: entries, files: files, sideFilesSkipped: nil, mode: options.mode, probes: options.probes, seed: seed)
        report.probesSkipped = probesSkipped.isEmpty ? nil : probesSkipped.joined(separator: "; ")
        return report
    }

    /// Files that must be byte for byte the base's: missing, extra and differing ones.
    private static func compareFiles(_ baseFiles: [String], _ mergedFiles: [String], base: String, merged: String, folder: String?) -> [VerifyReport.FileCheck] {
        let prefix = folder.map { $0 + "/" } ?? ""
        var checks: [VerifyReport.FileCheck] = []
        for f in baseFiles {
            guard mergedFiles.contains(f) else {
                checks.append(.init(file: prefix + f, status: .missing, detail: "missing from the merged pipeline (the base has it)"))
                continue
            }
            let same = (try? SHA256.file(atPath: base + "/" + prefix + f)) == (try? SHA256.file(atPath: merged + "/" + prefix + f))
            checks.append(.init(file: prefix + f, status: same ? .equal : .differs, detail: same ? nil : "differs from the base's copy"))
        }
        for f in mergedFiles where !baseFiles.contains(f) {
            checks.append(.init(file: prefix + f, status: .extra, detail: "in the merged pipeline but not in the base"))
        }
        return checks
    }
}
