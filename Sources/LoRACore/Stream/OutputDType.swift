import LoRAKernels
import SafeTensors

/// The dtype merged output tensors are written in.
public enum OutputDType: String, Sendable, CaseIterable {
    /// Each tensor keeps its base dtype.
    case keep
    case f32
    case f16
    case bf16

    var dtype: DType? {
        switch self {
        case .keep: return nil
        case .f32: return .float32
        case .f16: return .float16
        case .bf16: return .bfloat16
        }
    }

    /// transformers' config.json name for it (`torch_dtype` / `dtype` value).
    var torchName: String? {
        switch self {
        case .keep: return nil
        case .f32: return "float32"
        case .f16: return "float16"
        case .bf16: return "bfloat16"
        }
    }

    /// The output dtype of a tensor stored as `dtype`: float tensors are cast, others kept.
    func output(for dtype: DType) -> DType {
        guard let target = self.dtype, TensorData.format(dtype) != nil else { return dtype }
        return target
    }
}
