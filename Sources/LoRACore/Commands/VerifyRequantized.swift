import Foundation
import LoRAGraph
import SafeTensors

/// `verify` of a merge written back into its quantized base's scheme (`merge --requantize keep`,
/// or `--keep-quantized`): the merged checkpoint holds the scheme's codes, scales and quant states,
/// not float weights to hold within ulp bounds.
///
/// Requantization is deterministic (the reference quantizer on the merge rounded to the compute
/// dtype), so the output is recomputed as merge writes it — the same plan and kernel, then the
/// scheme's requantize pass (`RequantizeBlockScaledPass`, `RequantizeMXFP4Pass`, `Requantize4bitPass` in the mode the
/// merged file shows) — and every tensor must be the recomputation's bytes: codes, scales, quant
/// states, and the tensors left dense. Missing and extra tensors fail by name; side files are
/// compared as merge writes them (the quantization config kept). Probes do not apply: a requantized
/// weight differs from base + side branch by its quantization error, which no probe tolerance bounds.
extension Verify {
    /// The output `merge` writes for `dense` (the recomputed merge over a dequantized base) when
    /// `merged` is in the base's quantized layout, nil when it is a dense merge.
    static func requantizedOutput(of dense: TensorStream, merged: Checkpoint, plan: MergePlan,
                                  context: RunContext) throws -> TensorStream? {
        let denseNames = Set(dense.names)
        // A dense merge holds only the dense stream's tensors; a quantized one also the scheme's
        // companions (scales, quant states, SCB).
        guard merged.names.contains(where: { !denseNames.contains($0) }) else { return nil }
        let written: TensorStream
        if RequantizeBlockScaledPass.scheme(of: dense) != nil {
            written = try RequantizeBlockScaledPass().apply(to: dense)
        } else if RequantizeMXFP4Pass.applies(to: dense) {
            written = try RequantizeMXFP4Pass().apply(to: dense)
        } else {
            // bitsandbytes 4-bit: `--requantize keep` stores a merged weight as codes (U8), while
            // `--keep-quantized` writes merged weights dense and keeps the untouched ones 4-bit.
            let mergedWeight = plan.outputs.first { if case .merge = plan.action(for: $0.source) { return true } else { return false } }
            let requantized = mergedWeight.flatMap { merged.info($0.name) }.map { $0.dtype == .uint8 } ?? true
            written = try Requantize4bitPass(type: requantized ? "keep" : nil, context: context).apply(to: dense)
        }
        return castAsMerged(written, merged: merged, context: context)
    }

    /// `written` through the `CastPass` merge ran after requantizing when `--dtype` gave the dense
    /// tensors another float dtype: the one a tensor the pass casts has in `merged` (the pass leaves
    /// codes and quantization tables as they are, so those never tell).
    static func castAsMerged(_ written: TensorStream, merged: Checkpoint, context: RunContext) -> TensorStream {
        for name in written.names {
            guard let source = written.source(name), let stored = merged.info(name), stored.dtype != source.dtype,
                  TensorData.format(source.dtype) != nil,
                  let dtype = OutputDType.allCases.first(where: { $0.dtype == stored.dtype }) else { continue }
            let cast = CastPass(dtype, context: context).apply(to: written)
            // Only a dtype the cast itself gives that tensor, else the difference is the output's fault.
            if cast.source(name)?.dtype == stored.dtype { return cast }
        }
        return written
    }

    /// Compares every tensor of `merged` with `expected` byte for byte, and the side files.
    static func checkRequantized(_ expected: TensorStream, merged: Checkpoint, plan: MergePlan, options: VerifyOptions,
                                 seed: UInt64) throws -> VerifyReport {
        if options.mode == .probes {
            throw LoRACoreError.invalidRequest(
                "--mode probes cannot check \(options.merged): its merged weights are requantized, and a quantized weight differs from base + side branch by its quantization error, which no probe tolerance bounds; use --mode exact, which compares its codes with merge's requantization")
        }
        var entries: [VerifyReport.Entry] = []
        let step = 16 << 20
        for name in expected.names {
            let source = expected.source(name)!
            // An MXFP4 parameter's blocks and scales are merged as the parameter they store.
            let kind = Verify.kind(of: plan.action(for: (source as? WeightPart<RequantizedMXFP4>)?.weight.name ?? name))
            let family = TensorName(name).family
            guard let info = merged.info(name) else {
                entries.append(VerifyReport.Entry(tensor: name, family: family, kind: .missing, failures: ["missing from the merged checkpoint"]))
                continue
            }
            guard info.dtype == source.dtype, info.shape == source.shape else {
                entries.append(VerifyReport.Entry(tensor: name, family: family, kind: kind,
                                                  failures: ["\(info.dtype.rawValue) \(info.shape), but merge writes \(source.dtype.rawValue) \(source.shape) here"]))
                continue
            }
            let stored = try merged.bytes(of: name)
            var differs: Int?
            var want = [UInt8]()
            var at = 0
            while at < stored.count, differs == nil {
                let piece = at..<min(stored.count, at + step)
                want = [UInt8](unsafeUninitializedCapacity: piece.count) { buffer, n in n = piece.count }
                try want.withUnsafeMutableBytes { try source.fill(piece, into: $0.baseAddress!) }
                let got = UnsafeRawBufferPointer(rebasing: stored[piece])
                if !want.withUnsafeBytes({ $0.elementsEqual(got) }) {
                    differs = piece.lowerBound + (0..<piece.count).first { want[$0] != got[$0] }!
                }
                MappedFile.releasePages(got)
                at = piece.upperBound
            }
            source.finished()
            merged.release(name)
            let result = VerifyReport.ExactResult(maxUlps: differs == nil ? 0 : .infinity, allowedUlps: 0, normwise: false,
                                                  overBound: differs == nil ? 0 : 1, worst: nil)
            entries.append(VerifyReport.Entry(tensor: name, family: family, kind: kind, exact: result,
                                              failures: differs.map { ["byte \($0) differs from merge's requantized \(source.dtype.rawValue) bytes (requantization is deterministic)"] } ?? []))
        }
        let names = Set(expected.names)
        for name in merged.names where !names.contains(name) {
            entries.append(VerifyReport.Entry(tensor: name, family: TensorName(name).family, kind: .extra, failures: ["in the merged checkpoint but not in merge's requantized output"]))
        }
        var files = SideFileCheck.compareMetadata(merged)
        var skipped: String?
        if let baseDir = modelDirectory(options.base), let mergedDir = modelDirectory(options.merged) {
            // As for a quantized base (`--keep-quantized` adds the dense modules to the skip list), but
            // a model still in the scheme must keep its quantization_config.
            // `--dtype` names its dtype in config.json: the one the recomputation cast dense tensors to.
            let outputDType = expected.tensors.lazy.compactMap { ($0.source as? CastTensor)?.dtype }.first
            files += SideFileCheck.compare(base: baseDir, merged: mergedDir, outputDType: outputDType, quantizedBase: true)
            if try SideFiles.readJSON(baseDir + "/config.json")?["quantization_config"] != nil,
               try SideFiles.readJSON(mergedDir + "/config.json")?["quantization_config"] == nil,
               let i = files.firstIndex(where: { $0.file == "config.json" }) {
                files[i].status = .differs
                files[i].detail = "'quantization_config' is missing, but the merged weights are in the base's quantized layout"
            }
        } else {
            skipped = "the base or the merged model is a single file (merge copies side files only from a model directory)"
        }
        var report = VerifyReport(entries: entries, files: files, sideFilesSkipped: skipped, mode: options.mode, probes: options.probes, seed: seed)
        if options.mode.probes {
            report.probesSkipped = "the merged weights are requantized: every tensor is compared byte for byte with merge's requantization; a quantized weight's distance from base + side branch has no probe bound"
        }
        return report
    }
}
