#include "model/tensors.h"

namespace es {

const char* roleName(Role r) {
    switch (r) {
        case Role::Embed:
            return "embed";
        case Role::PosEmbed:
            return "position embeddings";
        case Role::TypeEmbed:
            return "token type embeddings";
        case Role::EmbNorm:
            return "embedding norm";
        case Role::EmbNormBias:
            return "embedding norm bias";
        case Role::FinalNorm:
            return "final norm";
        case Role::FinalNormBias:
            return "final norm bias";
        case Role::LmHead:
            return "lm head";
        case Role::LmHeadBias:
            return "lm head bias";
        case Role::AttnNorm:
            return "attention norm";
        case Role::AttnNormBias:
            return "attention norm bias";
        case Role::FfnNorm:
            return "FFN norm";
        case Role::FfnNormBias:
            return "FFN norm bias";
        case Role::AttnOutNorm:
            return "attention output norm";
        case Role::FfnOutNorm:
            return "FFN output norm";
        case Role::Q:
            return "query";
        case Role::K:
            return "key";
        case Role::V:
            return "value";
        case Role::O:
            return "output";
        case Role::QBias:
            return "query bias";
        case Role::KBias:
            return "key bias";
        case Role::VBias:
            return "value bias";
        case Role::OBias:
            return "output bias";
        case Role::QNorm:
            return "query norm";
        case Role::QKV:
            return "fused query/key/value";
        case Role::AttnGate:
            return "attention output gate";
        case Role::Sinks:
            return "attention sinks";
        case Role::KNorm:
            return "key norm";
        case Role::AttnRouter:
            return "attention router";
        case Role::AttnExpertQ:
            return "attention experts' query";
        case Role::AttnExpertO:
            return "attention experts' output";
        case Role::AttnExpertBias:
            return "attention experts' bias";
        case Role::KvProj:
            return "shared key/value";
        case Role::MlaQA:
            return "MLA query down-projection";
        case Role::MlaQABias:
            return "MLA query down-projection bias";
        case Role::MlaQANorm:
            return "MLA query latent norm";
        case Role::MlaQB:
            return "MLA query up-projection";
        case Role::MlaKvA:
            return "MLA key/value latent and RoPE key";
        case Role::MlaKvABias:
            return "MLA key/value latent bias";
        case Role::MlaKvANorm:
            return "MLA key/value latent norm";
        case Role::MlaKvB:
            return "MLA key/value up-projection";
        case Role::IndexQ:
            return "sparse-attention indexer query";
        case Role::IndexK:
            return "sparse-attention indexer key";
        case Role::IndexKNorm:
            return "sparse-attention indexer key norm";
        case Role::IndexKNormBias:
            return "sparse-attention indexer key norm bias";
        case Role::IndexWeights:
            return "sparse-attention indexer head weights";
        case Role::KvNorm:
            return "key/value norm";
        case Role::OGroupA:
            return "grouped output projection";
        case Role::OGroupB:
            return "output projection after the groups";
        case Role::CompKv:
            return "compressor kv projection";
        case Role::CompGate:
            return "compressor gate projection";
        case Role::CompPosBias:
            return "compressor position bias";
        case Role::CompNorm:
            return "compressor norm";
        case Role::IndexCompKv:
            return "indexer compressor kv projection";
        case Role::IndexCompGate:
            return "indexer compressor gate projection";
        case Role::IndexCompPosBias:
            return "indexer compressor position bias";
        case Role::IndexCompNorm:
            return "indexer compressor norm";
        case Role::HcAttnFn:
            return "attention hyper-connection map";
        case Role::HcAttnBase:
            return "attention hyper-connection base";
        case Role::HcAttnScale:
            return "attention hyper-connection scales";
        case Role::HcFfnFn:
            return "FFN hyper-connection map";
        case Role::HcFfnBase:
            return "FFN hyper-connection base";
        case Role::HcFfnScale:
            return "FFN hyper-connection scales";
        case Role::HcHeadFn:
            return "head hyper-connection map";
        case Role::HcHeadBase:
            return "head hyper-connection base";
        case Role::HcHeadScale:
            return "head hyper-connection scale";
        case Role::FfnGate:
            return "FFN gate";
        case Role::FfnGateBias:
            return "FFN gate bias";
        case Role::FfnUpBias:
            return "FFN up bias";
        case Role::FfnUp:
            return "FFN up";
        case Role::FfnDown:
            return "FFN down";
        case Role::FfnDownBias:
            return "FFN down bias";
        case Role::Router:
            return "router";
        case Role::RouterBias:
            return "router bias";
        case Role::RouterSelectionBias:
            return "router selection bias";
        case Role::RouterExpertScale:
            return "per-expert output scale";
        case Role::RouterHashTable:
            return "token-to-expert hash table";
        case Role::ExpertGate:
            return "expert gate";
        case Role::ExpertUp:
            return "expert up";
        case Role::ExpertDown:
            return "expert down";
        case Role::ExpertGateUpBias:
            return "expert gate/up bias";
        case Role::ExpertDownBias:
            return "expert down bias";
        case Role::MoeBias:
            return "MoE output bias";
        case Role::SharedGate:
            return "shared expert gate";
        case Role::SharedUp:
            return "shared expert up";
        case Role::SharedDown:
            return "shared expert down";
        case Role::SharedGateBias:
            return "shared expert gate bias";
        case Role::SharedUpBias:
            return "shared expert up bias";
        case Role::SharedDownBias:
            return "shared expert down bias";
        case Role::SharedExpertGate:
            return "shared expert's gate";
        case Role::MoeLatentIn:
            return "MoE latent input projection";
        case Role::MoeLatentInBias:
            return "MoE latent input projection bias";
        case Role::MoeLatentOut:
            return "MoE latent output projection";
        case Role::MoeLatentOutBias:
            return "MoE latent output projection bias";
        case Role::MoeInNorm:
            return "MoE branch's input norm";
        case Role::DenseOutNorm:
            return "dense branch's output norm";
        case Role::MoeOutNorm:
            return "MoE branch's output norm";
        case Role::RouterInputScale:
            return "router input scale";
        case Role::LayerScalar:
            return "layer scalar";
        case Role::LinQKVZ:
            return "linear attention's fused q/k/v/z projection";
        case Role::LinBA:
            return "linear attention's fused beta/decay projection";
        case Role::LinQKV:
            return "linear attention's q/k/v projection";
        case Role::LinZ:
            return "linear attention's output gate projection";
        case Role::LinB:
            return "linear attention's beta projection";
        case Role::LinA:
            return "linear attention's decay projection";
        case Role::LinConv:
            return "linear attention's convolution";
        case Role::LinDtBias:
            return "linear attention's dt bias";
        case Role::LinALog:
            return "linear attention's A_log";
        case Role::LinNorm:
            return "linear attention's gated norm";
        case Role::LinOut:
            return "linear attention's output projection";
        case Role::KdaQ:
            return "Kimi Delta Attention's query projection";
        case Role::KdaK:
            return "Kimi Delta Attention's key projection";
        case Role::KdaV:
            return "Kimi Delta Attention's value projection";
        case Role::KdaQConv:
            return "Kimi Delta Attention's query convolution";
        case Role::KdaKConv:
            return "Kimi Delta Attention's key convolution";
        case Role::KdaVConv:
            return "Kimi Delta Attention's value convolution";
        case Role::KdaForgetA:
            return "Kimi Delta Attention's forget gate (down)";
        case Role::KdaForgetB:
            return "Kimi Delta Attention's forget gate (up)";
        case Role::KdaGateA:
            return "Kimi Delta Attention's output gate (down)";
        case Role::KdaGateB:
            return "Kimi Delta Attention's output gate (up)";
        case Role::LightQKV:
            return "lightning attention's q/k/v projection";
        case Role::LightGate:
            return "lightning attention's output gate";
        case Role::LightNorm:
            return "lightning attention's output norm";
        case Role::LightOut:
            return "lightning attention's output projection";
        case Role::LightSlope:
            return "lightning attention's decay rates";
        case Role::LightQueryDecay:
            return "lightning attention's query decays";
        case Role::LightKeyDecay:
            return "lightning attention's key decays";
        case Role::LightDiagDecay:
            return "lightning attention's in-block decays";
        case Role::MambaIn:
            return "Mamba's input projection";
        case Role::MambaInBias:
            return "Mamba's input projection bias";
        case Role::MambaConv:
            return "Mamba's convolution";
        case Role::MambaConvBias:
            return "Mamba's convolution bias";
        case Role::MambaXProj:
            return "Mamba's dt/B/C projection";
        case Role::MambaDt:
            return "Mamba's dt projection";
        case Role::MambaDtBias:
            return "Mamba's dt bias";
        case Role::MambaALog:
            return "Mamba's A_log";
        case Role::MambaD:
            return "Mamba's D";
        case Role::MambaOut:
            return "Mamba's output projection";
        case Role::MambaOutBias:
            return "Mamba's output projection bias";
        case Role::MambaDtNorm:
            return "Mamba's dt norm";
        case Role::MambaBNorm:
            return "Mamba's B norm";
        case Role::MambaCNorm:
            return "Mamba's C norm";
        case Role::MambaGatedNorm:
            return "Mamba2's gated norm";
        case Role::ConvIn:
            return "short convolution's input projection";
        case Role::ConvInBias:
            return "short convolution's input projection bias";
        case Role::ConvWeight:
            return "short convolution's kernel";
        case Role::ConvBias:
            return "short convolution's bias";
        case Role::ConvOut:
            return "short convolution's output projection";
        case Role::ConvOutBias:
            return "short convolution's output projection bias";
    }
    return "?";
}

Dim operator*(int m, Dim::Sym s) { return Dim(s, m); }

std::string fillTemplate(const std::string& tmpl, int layer, int expert) {
    std::string out;
    out.reserve(tmpl.size() + 8);
    for (size_t i = 0; i < tmpl.size(); ++i) {
        if (tmpl.compare(i, 3, "{L}") == 0) {
            out += std::to_string(layer);
            i += 2;
        } else if (tmpl.compare(i, 4, "{L2}") == 0) {
            out += std::to_string(layer / 2);
            i += 3;
        } else if (tmpl.compare(i, 3, "{S}") == 0) {
            out += std::to_string(layer % 2);
            i += 2;
        } else if (tmpl.compare(i, 3, "{E}") == 0) {
            out += std::to_string(expert);
            i += 2;
        } else {
            out += tmpl[i];
        }
    }
    return out;
}

}  // namespace es
