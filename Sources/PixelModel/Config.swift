import Foundation

/// CLIP vision tower configuration (HF `CLIPVisionConfig` field names).
public struct CLIPVisionConfig: Codable, Equatable, Sendable {
    public var hiddenSize = 1024
    public var intermediateSize = 4096
    public var numHiddenLayers = 24
    public var numAttentionHeads = 16
    /// Size the checkpoint's position table was trained at (336 for clip-vit-large-patch14-336).
    public var imageSize = 336
    public var patchSize = 14
    public var numChannels = 3
    public var layerNormEps: Float = 1e-5
    public var hiddenAct = "quick_gelu"
    public var initializerRange: Float = 0.02

    enum CodingKeys: String, CodingKey {
        case hiddenSize = "hidden_size", intermediateSize = "intermediate_size", numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads", imageSize = "image_size", patchSize = "patch_size"
        case numChannels = "num_channels", layerNormEps = "layer_norm_eps", hiddenAct = "hidden_act"
        case initializerRange = "initializer_range"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = CLIPVisionConfig()
        hiddenSize = try c.decodeIfPresent(Int.self, forKey: .hiddenSize) ?? d.hiddenSize
        intermediateSize = try c.decodeIfPresent(Int.self, forKey: .intermediateSize) ?? d.intermediateSize
        numHiddenLayers = try c.decodeIfPresent(Int.self, forKey: .numHiddenLayers) ?? d.numHiddenLayers
        numAttentionHeads = try c.decodeIfPresent(Int.self, forKey: .numAttentionHeads) ?? d.numAttentionHeads
        imageSize = try c.decodeIfPresent(Int.self, forKey: .imageSize) ?? d.imageSize
        patchSize = try c.decodeIfPresent(Int.self, forKey: .patchSize) ?? d.patchSize
        numChannels = try c.decodeIfPresent(Int.self, forKey: .numChannels) ?? d.numChannels
        layerNormEps = try c.decodeIfPresent(Float.self, forKey: .layerNormEps) ?? d.layerNormEps
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct) ?? d.hiddenAct
        initializerRange = try c.decodeIfPresent(Float.self, forKey: .initializerRange) ?? d.initializerRange
    }
}

/// The pixel decoder's sizes. The released model hard-codes them (256 / depth 2 / MLP 2048 / 8 heads);
/// they are configurable so that the `tiny` test model stays small.
public struct DecoderConfig: Codable, Equatable, Sendable {
    public var promptEmbedDim = 256
    public var transformerDepth = 2
    public var mlpDim = 2048
    public var numHeads = 8
    /// Cross-attention internal dim = promptEmbedDim / attentionDownsampleRate.
    public var attentionDownsampleRate = 2
    public var numMultimaskOutputs = 3
    public var iouHeadDepth = 3
    public var iouHeadHiddenDim = 256
    public var maskInChans = 16

    enum CodingKeys: String, CodingKey {
        case promptEmbedDim = "prompt_embed_dim", transformerDepth = "transformer_depth", mlpDim = "mlp_dim"
        case numHeads = "num_heads", attentionDownsampleRate = "attention_downsample_rate"
        case numMultimaskOutputs = "num_multimask_outputs", iouHeadDepth = "iou_head_depth"
        case iouHeadHiddenDim = "iou_head_hidden_dim", maskInChans = "mask_in_chans"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = DecoderConfig()
        promptEmbedDim = try c.decodeIfPresent(Int.self, forKey: .promptEmbedDim) ?? d.promptEmbedDim
        transformerDepth = try c.decodeIfPresent(Int.self, forKey: .transformerDepth) ?? d.transformerDepth
        mlpDim = try c.decodeIfPresent(Int.self, forKey: .mlpDim) ?? d.mlpDim
        numHeads = try c.decodeIfPresent(Int.self, forKey: .numHeads) ?? d.numHeads
        attentionDownsampleRate = try c.decodeIfPresent(Int.self, forKey: .attentionDownsampleRate) ?? d.attentionDownsampleRate
        numMultimaskOutputs = try c.decodeIfPresent(Int.self, forKey: .numMultimaskOutputs) ?? d.numMultimaskOutputs
        iouHeadDepth = try c.decodeIfPresent(Int.self, forKey: .iouHeadDepth) ?? d.iouHeadDepth
        iouHeadHiddenDim = try c.decodeIfPresent(Int.self, forKey: .iouHeadHiddenDim) ?? d.iouHeadHiddenDim
        maskInChans = try c.decodeIfPresent(Int.self, forKey: .maskInChans) ?? d.maskInChans
    }
}

/// A PixelLM configuration as an HF-style `config.json`: the LLaMA fields at the top level (as in the
/// released `hf_model/config.json`), the PixelLM fields beside them, and `vision_config` / `decoder_config`
/// (absent from released checkpoints, whose CLIP-L/14-336 and decoder sizes are then the defaults).
public struct PixelLMConfig: Codable, Equatable, Sendable {
    // LLaMA
    public var vocabSize = 32009
    public var hiddenSize = 4096
    public var intermediateSize = 11008
    public var numHiddenLayers = 32
    public var numAttentionHeads = 32
    public var numKeyValueHeads = 32
    public var rmsNormEps: Float = 1e-6
    public var ropeTheta: Float = 10000
    public var maxPositionEmbeddings = 2048
    public var initializerRange: Float = 0.02
    public var tieWordEmbeddings = false
    // multimodal
    public var mmHiddenSize = 1024
    public var mmVisionSelectLayer = -2
    /// The second (mid) CLIP feature level; -11 in the released code (hard-coded there).
    public var mmVisionMidLayer = -11
    public var mmUseImStartEnd = true
    public var resizeVisionTowerSize = 448
    public var outDim = 256
    public var segTokenNum = 3
    public var imageFeatureScaleNum = 2
    /// The LLM's image tokens are the deep CLIP grid average-pooled in k x k cells (the released model: 2, a
    /// 32 x 32 grid giving 256 tokens). Ours, for small models: a finer grid for the decoder's masks without
    /// a longer LLM sequence (patch 14 at 224 px with 4 gives 16 tokens). Written to config.json only when
    /// it is not 2.
    public var mmImagePool = 2
    /// "released" (the released code: fixed weights 1/(seg_token_num x image_feature_scale_num), i.e. each
    /// scale's query is sum_n h_n / 6) or "learned" (the paper's linear fusion, initialised to the released
    /// weights). "mean", this field's former name for the released fusion, is read as "released".
    public var tokenFusion = "released"
    public var visionConfig = CLIPVisionConfig()
    public var decoderConfig = DecoderConfig()
    /// LoRA adapters on the LLaMA layers, kept separate (PEFT names); nil: none (merged or never added).
    public var lora: LoRAConfig?

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads", rmsNormEps = "rms_norm_eps", ropeTheta = "rope_theta"
        case maxPositionEmbeddings = "max_position_embeddings", initializerRange = "initializer_range"
        case tieWordEmbeddings = "tie_word_embeddings", mmHiddenSize = "mm_hidden_size"
        case mmVisionSelectLayer = "mm_vision_select_layer", mmVisionMidLayer = "mm_vision_mid_layer"
        case mmUseImStartEnd = "mm_use_im_start_end", resizeVisionTowerSize = "resize_vision_tower_size"
        case outDim = "out_dim", segTokenNum = "seg_token_num", imageFeatureScaleNum = "image_feature_scale_num"
        case tokenFusion = "token_fusion", visionConfig = "vision_config", decoderConfig = "decoder_config", lora
        case mmImagePool = "mm_image_pool"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = PixelLMConfig()
        // the LLaMA sizes have no sensible default: a config.json without them (`{}`) would otherwise become a 7B
        for k in Self.requiredKeys where !c.contains(k) {
            throw DecodingError.keyNotFound(k, .init(codingPath: [k], debugDescription: "a LLaMA / PixelLM config.json states it"))
        }
        func get<T: Decodable>(_ k: CodingKeys, _ def: T) throws -> T { try c.decodeIfPresent(T.self, forKey: k) ?? def }
        vocabSize = try get(.vocabSize, d.vocabSize)
        hiddenSize = try get(.hiddenSize, d.hiddenSize)
        intermediateSize = try get(.intermediateSize, d.intermediateSize)
        numHiddenLayers = try get(.numHiddenLayers, d.numHiddenLayers)
        numAttentionHeads = try get(.numAttentionHeads, d.numAttentionHeads)
        numKeyValueHeads = try get(.numKeyValueHeads, numAttentionHeads)
        rmsNormEps = try get(.rmsNormEps, d.rmsNormEps)
        ropeTheta = try get(.ropeTheta, d.ropeTheta)
        maxPositionEmbeddings = try get(.maxPositionEmbeddings, d.maxPositionEmbeddings)
        initializerRange = try get(.initializerRange, d.initializerRange)
        tieWordEmbeddings = try get(.tieWordEmbeddings, d.tieWordEmbeddings)
        mmHiddenSize = try get(.mmHiddenSize, d.mmHiddenSize)
        mmVisionSelectLayer = try get(.mmVisionSelectLayer, d.mmVisionSelectLayer)
        mmVisionMidLayer = try get(.mmVisionMidLayer, d.mmVisionMidLayer)
        mmUseImStartEnd = try get(.mmUseImStartEnd, d.mmUseImStartEnd)
        resizeVisionTowerSize = try get(.resizeVisionTowerSize, d.resizeVisionTowerSize)
        outDim = try get(.outDim, d.outDim)
        segTokenNum = try get(.segTokenNum, d.segTokenNum)
        imageFeatureScaleNum = try get(.imageFeatureScaleNum, d.imageFeatureScaleNum)
        mmImagePool = try get(.mmImagePool, d.mmImagePool)
        tokenFusion = try get(.tokenFusion, d.tokenFusion)
        if tokenFusion == "mean" { tokenFusion = "released" }
        visionConfig = try get(.visionConfig, d.visionConfig)
        decoderConfig = try get(.decoderConfig, d.decoderConfig)
        lora = try c.decodeIfPresent(LoRAConfig.self, forKey: .lora)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(numKeyValueHeads, forKey: .numKeyValueHeads)
        try c.encode(rmsNormEps, forKey: .rmsNormEps)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(initializerRange, forKey: .initializerRange)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(mmHiddenSize, forKey: .mmHiddenSize)
        try c.encode(mmVisionSelectLayer, forKey: .mmVisionSelectLayer)
        try c.encode(mmVisionMidLayer, forKey: .mmVisionMidLayer)
        try c.encode(mmUseImStartEnd, forKey: .mmUseImStartEnd)
        try c.encode(resizeVisionTowerSize, forKey: .resizeVisionTowerSize)
        try c.encode(outDim, forKey: .outDim)
        try c.encode(segTokenNum, forKey: .segTokenNum)
        try c.encode(imageFeatureScaleNum, forKey: .imageFeatureScaleNum)
        try c.encode(tokenFusion, forKey: .tokenFusion)
        try c.encode(visionConfig, forKey: .visionConfig)
        try c.encode(decoderConfig, forKey: .decoderConfig)
        try c.encodeIfPresent(lora, forKey: .lora)
        // the released layout has no such field: a config that pools as the release does stays the release's
        if mmImagePool != 2 { try c.encode(mmImagePool, forKey: .mmImagePool) }
    }

    /// Fields every config.json must state (a HF LLaMA config always does).
    static let requiredKeys: [CodingKeys] = [.vocabSize, .hiddenSize, .intermediateSize, .numHiddenLayers, .numAttentionHeads]

    /// Head dim of the LLM.
    public var headDim: Int { hiddenSize / numAttentionHeads }
    /// CLIP grid at the resized input size (32 at 448 px with patch 14).
    public var visionGrid: Int { resizeVisionTowerSize / visionConfig.patchSize }
    /// Image tokens spliced into the LLM input after k x k pooling, k = mm_image_pool (256 at 448 px, k 2).
    public var imageTokenCount: Int { (visionGrid / mmImagePool) * (visionGrid / mmImagePool) }
    /// Codebook size: seg tokens per target.
    public var segTokensPerTarget: Int { segTokenNum * imageFeatureScaleNum }

    /// Reads a `config.json`; errors name the file and the field.
    /// `validate: false` leaves the size checks to the caller (a released config whose CLIP sizes come from
    /// the vision tower's own config.json).
    public static func load(_ path: String, validate: Bool = true) throws -> PixelLMConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, message: "cannot read the file")
        }
        do {
            let c = try JSONDecoder().decode(PixelLMConfig.self, from: data)
            if validate { try c.validate(file: path) }
            return c
        } catch let e as ConfigError {
            throw e
        } catch let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx) {
            throw ConfigError(file: path, message: "field '\(ctx.codingPath.map { $0.stringValue }.joined(separator: "."))': \(ctx.debugDescription)")
        } catch let DecodingError.keyNotFound(key, _) {
            throw ConfigError(file: path, message: "field '\(key.stringValue)' is missing (a LLaMA / PixelLM config.json states it)")
        } catch let DecodingError.dataCorrupted(ctx) where !ctx.codingPath.isEmpty {
            // valid JSON whose value does not fit the field (e.g. "hidden_size": 32.5)
            throw ConfigError(file: path, message: "field '\(ctx.codingPath.map { $0.stringValue }.joined(separator: "."))': \(ctx.debugDescription)")
        } catch let DecodingError.dataCorrupted(ctx) {
            // Foundation reports a number that does not fit an Int field ("hidden_size": 32.5) as invalid JSON
            // without the field: find it
            if let field = nonIntegerSizeField(data) {
                throw ConfigError(file: path, message: "field '\(field)': not an integer")
            }
            throw ConfigError(file: path, message: "not valid JSON: \(ctx.debugDescription)")
        } catch {
            throw ConfigError(file: path, message: "\(error)")
        }
    }

    /// The first integer field of a config.json (top level, vision_config, decoder_config) holding a fractional
    /// number, if the data is JSON at all.
    static func nonIntegerSizeField(_ data: Data) -> String? {
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        let floats: Set<String> = ["rms_norm_eps", "rope_theta", "initializer_range", "layer_norm_eps", "lora_alpha", "lora_dropout"]
        func scan(_ o: [String: Any], _ prefix: String) -> String? {
            for (k, v) in o.sorted(by: { $0.key < $1.key }) where !floats.contains(k) {
                if let n = v as? NSNumber, n.doubleValue.rounded() != n.doubleValue { return prefix + k }
            }
            return nil
        }
        return scan(obj, "") ?? (obj["vision_config"] as? [String: Any]).flatMap { scan($0, "vision_config.") }
            ?? (obj["decoder_config"] as? [String: Any]).flatMap { scan($0, "decoder_config.") }
    }

    /// Checks the sizes fit together.
    public func validate(file: String = "config") throws {
        func fail(_ field: String, _ why: String) throws { throw ConfigError(file: file, message: "field '\(field)': \(why)") }
        // sizes first: a zero divides below, a negative or huge one would size buffers (every product of two sizes
        // below fits an Int once each is at most 2^24 and the layer counts at most 4096)
        func size(_ field: String, _ v: Int, max: Int = 1 << 24) throws {
            if v < 1 || v > max { try fail(field, "\(v) is not a size in 1...\(max)") }
        }
        func positive(_ field: String, _ v: Float) throws {
            if !(v > 0) || !v.isFinite { try fail(field, "\(v) must be a finite number > 0") }
        }
        let vc = visionConfig, dc = decoderConfig
        for (f, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                       ("num_attention_heads", numAttentionHeads), ("num_key_value_heads", numKeyValueHeads),
                       ("max_position_embeddings", maxPositionEmbeddings), ("mm_hidden_size", mmHiddenSize),
                       ("resize_vision_tower_size", resizeVisionTowerSize), ("out_dim", outDim),
                       ("vision_config.hidden_size", vc.hiddenSize), ("vision_config.intermediate_size", vc.intermediateSize),
                       ("vision_config.num_attention_heads", vc.numAttentionHeads), ("vision_config.image_size", vc.imageSize),
                       ("vision_config.patch_size", vc.patchSize),
                       ("decoder_config.prompt_embed_dim", dc.promptEmbedDim), ("decoder_config.mlp_dim", dc.mlpDim),
                       ("decoder_config.num_heads", dc.numHeads), ("decoder_config.attention_downsample_rate", dc.attentionDownsampleRate),
                       ("decoder_config.iou_head_hidden_dim", dc.iouHeadHiddenDim), ("decoder_config.mask_in_chans", dc.maskInChans)] {
            try size(f, v)
        }
        for (f, v) in [("num_hidden_layers", numHiddenLayers), ("vision_config.num_hidden_layers", vc.numHiddenLayers),
                       ("decoder_config.transformer_depth", dc.transformerDepth), ("decoder_config.iou_head_depth", dc.iouHeadDepth),
                       ("seg_token_num", segTokenNum), ("decoder_config.num_multimask_outputs", dc.numMultimaskOutputs)] {
            try size(f, v, max: 4096)
        }
        if vc.numChannels != 3 { try fail("vision_config.num_channels", "\(vc.numChannels) (RGB images: 3)") }
        try positive("rms_norm_eps", rmsNormEps)
        try positive("rope_theta", ropeTheta)
        try positive("vision_config.layer_norm_eps", vc.layerNormEps)
        if !(initializerRange >= 0) || !initializerRange.isFinite { try fail("initializer_range", "\(initializerRange) must be a finite number >= 0") }
        if !["quick_gelu", "gelu"].contains(vc.hiddenAct) { try fail("vision_config.hidden_act", "'\(vc.hiddenAct)' is not quick_gelu or gelu") }
        if mmVisionSelectLayer >= 0 || mmVisionMidLayer >= 0 {
            try fail(mmVisionSelectLayer >= 0 ? "mm_vision_select_layer" : "mm_vision_mid_layer",
                     "must be negative (a hidden state counted from the last, as -2)")
        }
        let approxParameters = Double(numHiddenLayers) * (4 * Double(hiddenSize) * Double(hiddenSize) + 3 * Double(hiddenSize) * Double(intermediateSize))
            + 2 * Double(vocabSize) * Double(hiddenSize)
            + Double(vc.numHiddenLayers) * (4 * Double(vc.hiddenSize) * Double(vc.hiddenSize) + 2 * Double(vc.hiddenSize) * Double(vc.intermediateSize))
        if approxParameters > 1e12 { try fail("hidden_size", String(format: "the sizes give about %.3g parameters (more than 1e12)", approxParameters)) }
        if hiddenSize % numAttentionHeads != 0 { try fail("hidden_size", "\(hiddenSize) is not a multiple of num_attention_heads \(numAttentionHeads)") }
        if numAttentionHeads % numKeyValueHeads != 0 { try fail("num_key_value_heads", "\(numKeyValueHeads) does not divide num_attention_heads \(numAttentionHeads)") }
        if visionConfig.hiddenSize % visionConfig.numAttentionHeads != 0 { try fail("vision_config.hidden_size", "not a multiple of its num_attention_heads") }
        if resizeVisionTowerSize % visionConfig.patchSize != 0 { try fail("resize_vision_tower_size", "\(resizeVisionTowerSize) is not a multiple of patch_size \(visionConfig.patchSize)") }
        if mmImagePool < 1 || mmImagePool > 64 { try fail("mm_image_pool", "\(mmImagePool) is not a pooling size from 1 to 64") }
        if visionGrid % mmImagePool != 0 {
            try fail("resize_vision_tower_size", "the patch grid \(visionGrid) is not a multiple of mm_image_pool \(mmImagePool) (\(mmImagePool)x\(mmImagePool) pooling)")
        }
        if visionConfig.numHiddenLayers < max(-mmVisionSelectLayer, -mmVisionMidLayer) - 1 {
            try fail("vision_config.num_hidden_layers", "\(visionConfig.numHiddenLayers) layers cannot give hidden states \(mmVisionSelectLayer) and \(mmVisionMidLayer)")
        }
        if mmHiddenSize != visionConfig.hiddenSize { try fail("mm_hidden_size", "\(mmHiddenSize) differs from vision_config.hidden_size \(visionConfig.hiddenSize)") }
        if imageFeatureScaleNum < 1 || imageFeatureScaleNum > 2 { try fail("image_feature_scale_num", "\(imageFeatureScaleNum) (1 or 2 supported)") }
        if !["released", "mean", "learned"].contains(tokenFusion) {
            try fail("token_fusion", "'\(tokenFusion)' is not 'released' (alias 'mean') or 'learned'")
        }
        if dc.promptEmbedDim % dc.numHeads != 0 { try fail("decoder_config.prompt_embed_dim", "not a multiple of num_heads") }
        if (dc.promptEmbedDim / dc.attentionDownsampleRate) % dc.numHeads != 0 || dc.promptEmbedDim / dc.attentionDownsampleRate < dc.numHeads { try fail("decoder_config.attention_downsample_rate", "internal dim not a multiple of num_heads") }
        if outDim != dc.promptEmbedDim { try fail("out_dim", "\(outDim) differs from decoder_config.prompt_embed_dim \(dc.promptEmbedDim)") }
        try lora?.validate(file: file)
    }
}

public struct ConfigError: Error, CustomStringConvertible {
    public let file: String
    public let message: String
    public var description: String { "\(file): \(message)" }
}
