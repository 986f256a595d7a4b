import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

/// Broken image-model LoRAs: each is one edit of a fixture's kohya or diffusers file, merged into
/// every base layout of its family. Each must be refused with a one-line error naming the file or
/// module, never crash, and leave no output.
@Suite("Hostile image-model LoRAs: refused in one line, no crash, no output")
struct ImageHostileInputTests {
    /// One tensor as stored.
    struct Tensor {
        var name: String
        var dtype: DType
        var shape: [Int]
        var bytes: [UInt8]
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        /// The fixture LoRA the edit applies to.
        var source: String
        /// Bases it is merged into.
        var bases: [String]
        /// The edit: every tensor of the source in, the tensors of the broken file out.
        var edit: @Sendable ([Tensor]) -> [Tensor]
        var testDescription: String { name }
    }

    /// NaN in `dtype` (F16, BF16 or F32), little-endian.
    static func nan(_ dtype: DType) -> [UInt8] {
        switch dtype {
        case .float16: return [0x00, 0x7E]
        case .bfloat16: return [0xC0, 0x7F]
        default: return withUnsafeBytes(of: Float.nan.bitPattern.littleEndian, Array.init)
        }
    }

    /// `body` applied to the tensors whose name contains `key` (the first module's, by sorted name).
    static func editing(_ key: String, _ body: @escaping @Sendable (inout Tensor) -> Void) -> @Sendable ([Tensor]) -> [Tensor] {
        { tensors in
            tensors.map { t in
                var t = t
                if t.name.contains(key) { body(&t) }
                return t
            }
        }
    }

    /// Every tensor of module `module` renamed to module `to`.
    static func renaming(_ module: String, to new: String) -> @Sendable ([Tensor]) -> [Tensor] {
        { tensors in
            tensors.map { t in
                var t = t
                if t.name.hasPrefix(module + ".") { t.name = new + t.name.dropFirst(module.count) }
                return t
            }
        }
    }

    /// Every tensor name with `old` replaced by `new`.
    static func replacing(_ old: String, with new: String) -> @Sendable ([Tensor]) -> [Tensor] {
        { tensors in
            tensors.map { t in
                var t = t
                t.name = t.name.replacingOccurrences(of: old, with: new)
                return t
            }
        }
    }

    static let sd1Kohya = sd1 + "/kohya.safetensors"
    static let fluxKohya = flux + "/kohya.safetensors"
    static let fluxLoRA = flux + "/lora/pytorch_lora_weights.safetensors"
    static let sdBases = [sd1Pipeline, sd1Single]
    static let fluxBases = [fluxTransformer, fluxSingle]
    static let te = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    static let qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    static let toQ = "transformer.transformer_blocks.0.attn.to_q"

    static let cases: [Case] = [
        Case(name: "kohya lora_down as a scalar", source: sd1Kohya, bases: sdBases,
             edit: editing(te + ".lora_down") { $0.shape = []; $0.bytes = Array($0.bytes.prefix(2)) }),
        Case(name: "kohya lora_up 1-D", source: sd1Kohya, bases: sdBases,
             edit: editing(te + ".lora_up") { $0.shape = [$0.shape.reduce(1, *)] }),
        Case(name: "kohya alpha a vector", source: sd1Kohya, bases: sdBases,
             edit: editing(te + ".alpha") { $0.shape = [2]; $0.bytes += $0.bytes }),
        Case(name: "kohya alpha NaN", source: sd1Kohya, bases: sdBases,
             edit: editing(te + ".alpha") { $0.bytes = ImageHostileInputTests.nan($0.dtype) }),
        Case(name: "kohya lora_down NaN", source: sd1Kohya, bases: sdBases,
             edit: editing(te + ".lora_down") { t in t.bytes = (0..<(t.bytes.count / 2)).flatMap { _ in ImageHostileInputTests.nan(t.dtype) } }),
        Case(name: "kohya ranks disagree (lora_up has one column less)", source: sd1Kohya, bases: sdBases,
             edit: editing(te + ".lora_up") { $0.shape = [$0.shape[0], 1]; $0.bytes = Array($0.bytes.prefix($0.shape[0] * 2)) }),
        Case(name: "kohya zero-size lora_down (a ZeRO-3 save)", source: sd1Kohya, bases: sdBases,
             edit: editing(te + ".lora_down") { $0.shape = [0, $0.shape[1]]; $0.bytes = [] }),
        Case(name: "kohya lora_up wider than the base module", source: sd1Kohya, bases: sdBases,
             edit: editing(te + ".lora_up") { $0.shape[0] += 1; $0.bytes += [UInt8](repeating: 0, count: $0.shape[1] * 2) }),
        Case(name: "kohya module without lora_up", source: sd1Kohya, bases: sdBases,
             edit: { $0.filter { !$0.name.hasPrefix(te + ".lora_up") } }),
        Case(name: "kohya dora_scale of a shape that is neither per row nor per column", source: sd1Kohya, bases: sdBases,
             edit: { tensors in tensors + [Tensor(name: te + ".dora_scale", dtype: .float16, shape: [3], bytes: [UInt8](repeating: 0x3C, count: 6))] }),
        Case(name: "kohya LoHa module with only hada_w1_a", source: sd1Kohya, bases: sdBases,
             edit: { tensors in tensors.filter { !$0.name.hasPrefix(te + ".") } + [Tensor(name: te + ".hada_w1_a", dtype: .float16, shape: [16, 2], bytes: [UInt8](repeating: 0, count: 64))] }),
        Case(name: "kohya module name with an empty module", source: sd1Kohya, bases: sdBases,
             edit: renaming(te, to: "lora_unet_")),
        Case(name: "kohya block index past Int", source: sd1Kohya, bases: sdBases,
             edit: renaming(te, to: "lora_te_text_model_encoder_layers_99999999999999999999999_mlp_fc1")),
        Case(name: "Flux fused qkv lora_up with rows not three equal thirds", source: fluxKohya, bases: fluxBases,
             edit: editing(qkv + ".lora_up") { $0.shape[0] -= 1; $0.bytes = Array($0.bytes.dropLast($0.shape[1] * 2)) }),
        Case(name: "Flux double block past the model's", source: fluxKohya, bases: fluxBases,
             edit: renaming(qkv, to: "lora_unet_double_blocks_7_img_attn_qkv")),
        Case(name: "Flux block index past Int", source: fluxKohya, bases: fluxBases,
             edit: renaming(qkv, to: "lora_unet_double_blocks_99999999999999999999999_img_attn_qkv")),
        Case(name: "Flux module with a negative block index", source: fluxKohya, bases: fluxBases,
             edit: renaming(qkv, to: "lora_unet_double_blocks_-1_img_attn_qkv")),
        Case(name: "Flux kohya alpha NaN on a fused module", source: fluxKohya, bases: fluxBases,
             edit: editing(qkv + ".alpha") { $0.bytes = ImageHostileInputTests.nan($0.dtype) }),
        Case(name: "diffusers Flux lora_B with more rows than to_q", source: fluxLoRA, bases: fluxBases,
             edit: editing(toQ + ".lora_B") { $0.shape[0] += 2; $0.bytes += [UInt8](repeating: 0, count: 2 * $0.shape[1] * 2) }),
        Case(name: "diffusers Flux lora_A of a scalar", source: fluxLoRA, bases: fluxBases,
             edit: editing(toQ + ".lora_A") { $0.shape = []; $0.bytes = Array($0.bytes.prefix(2)) }),
        Case(name: "diffusers SD down block index at Int.max", source: sd1 + "/lora/pytorch_lora_weights.safetensors", bases: sdBases,
             edit: replacing("unet.down_blocks.0.", with: "unet.down_blocks.9223372036854775807.")),
        Case(name: "diffusers SD up block index at Int.max", source: sd1 + "/lora/pytorch_lora_weights.safetensors", bases: sdBases,
             edit: replacing("unet.up_blocks.1.attentions.0.", with: "unet.up_blocks.1.attentions.9223372036854775807.")),
        Case(name: "fal Kontext block index at Int.max", source: flux + "/../flux-variants/kontext.safetensors", bases: fluxBases,
             edit: replacing("double_blocks.0.", with: "double_blocks.9223372036854775807.")),
        Case(name: "XLabs block index past Int", source: flux + "/../flux-variants/xlabs.safetensors", bases: fluxBases,
             edit: replacing("double_blocks.0.", with: "double_blocks.99999999999999999999999.")),
    ]

    /// Writes `source`'s tensors through `edit` to `destination`, keeping its metadata.
    static func write(_ source: String, edited edit: ([Tensor]) -> [Tensor], to destination: String) throws {
        let file = try Checkpoint(path: source)
        let tensors = try edit(file.names.map { n in
            let i = file.info(n)!
            return Tensor(name: n, dtype: i.dtype, shape: i.shape, bytes: Array(try file.bytes(of: n)))
        })
        let w = try SafeTensorsWriter(path: destination, tensors: tensors.map { TensorInfo(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                                      metadata: file.metadata)
        let bytes = Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0.bytes) })
        while let t = w.nextTensor { try bytes[t.name]!.withUnsafeBytes { try w.write(t.name, bytes: $0) } }
        try w.finish()
    }

    @Test("A broken image LoRA merged into each base of its family: a one-line error, no output", arguments: cases)
    func refused(_ c: Case) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let lora = dir + "/broken.safetensors"
        try ImageHostileInputTests.write(c.source, edited: c.edit, to: lora)
        for (k, base) in c.bases.enumerated() {
            let output = dir + "/out\(k)" + (base.hasSuffix(".safetensors") ? ".safetensors" : "")
            do {
                _ = try mergeImageModel(base, [lora], into: output)
                Issue.record("\(c.name): merged into \(base)")
            } catch {
                // What lora-tool prints after "error: ".
                let message = (error as? LocalizedError)?.errorDescription ?? ""
                #expect(!message.isEmpty && !message.contains("\n"), "\(c.name) into \(base): \(error)")
                // It names the module (or the file when no module can be told apart).
                #expect(message.contains("module '") || message.contains("broken.safetensors"), "\(c.name) into \(base): \(message)")
            }
            #expect(!FileManager.default.fileExists(atPath: output), "\(c.name): output left at \(output)")
        }
        // inspect reads it or refuses it in one line too.
        do { _ = try Inspect.run(path: lora) } catch {
            let message = (error as? LocalizedError)?.errorDescription ?? ""
            #expect(!message.isEmpty && !message.contains("\n"), "\(c.name): inspect: \(error)")
        }
    }
}
