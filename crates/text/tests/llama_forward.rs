//! The paged, batched Llama forward against candle-transformers' own Llama
//! implementations on tiny random models written in the real formats, and
//! against itself under different batchings and block layouts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, quantized_llama};
use switchyard_core::DeviceId;
use switchyard_pool::BlockId;
use switchyard_testkit::tiny::{self, GgufQuant, TinyLlama};
use switchyard_text::{LlamaModel, LoadOptions, QuantMatmul, SeqStep, TextError};

const PROMPT: [u32; 9] = [5, 17, 42, 99, 3, 250, 7, 61, 128];

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Our model with candle's `QMatMul` for quantized matrices: the same
/// matmul as the reference, so the rest of the forward is checked tightly.
fn load_candle_matmul(path: &Path) -> LlamaModel {
    let options = LoadOptions::default().with_matmul(QuantMatmul::Candle);
    let model = LlamaModel::load_with(path, DeviceId::Cpu, options).unwrap();
    assert!(!model.uses_kernels());
    model
}

/// Logits after the last prompt token, our model, one sequence, one block
/// table of consecutive blocks.
fn ours_last_logits(model: &LlamaModel, prompt: &[u32], block_size: usize) -> Tensor {
    let blocks: Vec<BlockId> = (0..prompt.len().div_ceil(block_size) as u32).collect();
    let mut cache = model.new_kv_cache(blocks.len().max(1), block_size).unwrap();
    let step = SeqStep {
        tokens: prompt,
        start: 0,
        blocks: &blocks,
        logits: true,
    };
    model
        .forward(&mut cache, &[step])
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn reference_safetensors(dir: &Path, prompt: &[u32]) -> Tensor {
    let cfg: llama::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = cfg.into_config(false);
    let weights = dir.join("model.safetensors");
    #[allow(unsafe_code)]
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)
    }
    .unwrap();
    let model = llama::Llama::load(vb, &cfg).unwrap();
    let mut cache = llama::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
    let x = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&x, 0, &mut cache)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn reference_gguf(path: &Path, prompt: &[u32]) -> Tensor {
    let mut f = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut model =
        quantized_llama::ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap();
    let x = Tensor::new(prompt, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&x, 0).unwrap().squeeze(0).unwrap()
}

#[test]
fn safetensors_model_matches_candle_transformers_llama() {
    let dir = tempfile::tempdir().unwrap();
    for (tied, seed) in [(false, 1), (true, 2)] {
        let spec = TinyLlama {
            tie_word_embeddings: tied,
            ..TinyLlama::default()
        };
        let d = dir.path().join(format!("m{seed}"));
        tiny::write_llama_safetensors(&d, &spec, seed).unwrap();
        let model = LlamaModel::load(&d, DeviceId::Cpu).unwrap();
        assert_eq!(model.config().tied_embeddings, tied);
        let ours = ours_last_logits(&model, &PROMPT, 4);
        let reference = reference_safetensors(&d, &PROMPT);
        let diff = max_abs_diff(&ours, &reference);
        assert!(diff < 1e-4, "tied={tied}: max |diff| {diff}");
    }
}

#[test]
fn gguf_model_matches_candle_transformers_quantized_llama() {
    let dir = tempfile::tempdir().unwrap();
    for quant in [GgufQuant::F32, GgufQuant::Q8_0, GgufQuant::Q4_0] {
        let spec = TinyLlama::default();
        let path = dir.path().join(format!("{quant:?}.gguf"));
        tiny::write_llama_gguf(&path, &spec, quant, 3).unwrap();
        let model = load_candle_matmul(&path);
        let ours = ours_last_logits(&model, &PROMPT, 16);
        let reference = reference_gguf(&path, &PROMPT);
        let diff = max_abs_diff(&ours, &reference);
        assert!(diff < 1e-4, "{quant:?}: max |diff| {diff}");
    }
}

#[test]
fn gguf_and_safetensors_of_one_model_agree() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinyLlama::default();
    tiny::write_llama_safetensors(&dir.path().join("st"), &spec, 9).unwrap();
    let gguf = dir.path().join("m.gguf");
    tiny::write_llama_gguf(&gguf, &spec, GgufQuant::F32, 9).unwrap();
    let a = LlamaModel::load(&dir.path().join("st"), DeviceId::Cpu).unwrap();
    let b = LlamaModel::load(&gguf, DeviceId::Cpu).unwrap();
    let diff = max_abs_diff(
        &ours_last_logits(&a, &PROMPT, 4),
        &ours_last_logits(&b, &PROMPT, 4),
    );
    assert!(diff < 1e-4, "max |diff| {diff}");
}

/// Decode `steps` more tokens after the prompt greedily, one sequence, with
/// the prompt prefilled in chunks of `chunk` tokens and blocks taken from
/// the end of the storage backwards (so block ids are neither consecutive
/// nor ascending).
fn greedy_chunked(model: &LlamaModel, chunk: usize, steps: usize) -> Vec<u32> {
    let block_size = 4;
    let num_blocks = 16;
    let mut cache = model.new_kv_cache(num_blocks, block_size).unwrap();
    let blocks: Vec<BlockId> = (0..num_blocks as u32).rev().collect();
    let mut tokens = PROMPT.to_vec();
    let mut logits = None;
    for (i, part) in PROMPT.chunks(chunk).enumerate() {
        let step = SeqStep {
            tokens: part,
            start: i * chunk,
            blocks: &blocks,
            logits: (i + 1) * chunk >= PROMPT.len(),
        };
        logits = Some(model.forward(&mut cache, &[step]).unwrap());
    }
    let mut out = Vec::new();
    for _ in 0..steps {
        let l: Vec<f32> = logits
            .take()
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let next = switchyard_text::argmax(&l);
        out.push(next);
        tokens.push(next);
        let step = SeqStep {
            tokens: &[next],
            start: tokens.len() - 1,
            blocks: &blocks,
            logits: true,
        };
        logits = Some(model.forward(&mut cache, &[step]).unwrap());
    }
    out
}

#[test]
fn chunked_prefill_and_scattered_blocks_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_llama_safetensors(dir.path(), &TinyLlama::default(), 4).unwrap();
    let model = LlamaModel::load(dir.path(), DeviceId::Cpu).unwrap();
    let whole = greedy_chunked(&model, PROMPT.len(), 6);
    for chunk in [1, 3, 4] {
        assert_eq!(greedy_chunked(&model, chunk, 6), whole, "chunk {chunk}");
    }
}

#[test]
fn a_mixed_batch_equals_each_sequence_alone() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_llama_gguf(
        &dir.path().join("m.gguf"),
        &TinyLlama::default(),
        GgufQuant::Q8_0,
        5,
    )
    .unwrap();
    let model = LlamaModel::load(&dir.path().join("m.gguf"), DeviceId::Cpu).unwrap();
    let bs = 4;
    // Sequence A: 6 tokens already cached, decoding its 7th; B: a fresh
    // 5-token prefill; C: a prefill chunk that wants no logits.
    let a: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 7];
    let b: Vec<u32> = vec![40, 41, 42, 43, 44];
    let c: Vec<u32> = vec![9, 8, 7];
    let (ta, tb, tc): (Vec<BlockId>, Vec<BlockId>, Vec<BlockId>) =
        (vec![7, 2], vec![0, 5], vec![3]);

    // Alone, each in its own cache.
    let alone = |tokens: &[u32], table: &[BlockId], split: usize| {
        let mut cache = model.new_kv_cache(8, bs).unwrap();
        if split > 0 {
            let s = SeqStep {
                tokens: &tokens[..split],
                start: 0,
                blocks: table,
                logits: false,
            };
            model.forward(&mut cache, &[s]).unwrap();
        }
        let s = SeqStep {
            tokens: &tokens[split..],
            start: split,
            blocks: table,
            logits: true,
        };
        model.forward(&mut cache, &[s]).unwrap().squeeze(0).unwrap()
    };
    let la = alone(&a, &ta, 6);
    let lb = alone(&b, &tb, 0);

    // Together, in one cache.
    let mut cache = model.new_kv_cache(8, bs).unwrap();
    let s = SeqStep {
        tokens: &a[..6],
        start: 0,
        blocks: &ta,
        logits: false,
    };
    model.forward(&mut cache, &[s]).unwrap();
    let batch = [
        SeqStep {
            tokens: &a[6..],
            start: 6,
            blocks: &ta,
            logits: true,
        },
        SeqStep {
            tokens: &b,
            start: 0,
            blocks: &tb,
            logits: true,
        },
        SeqStep {
            tokens: &c,
            start: 0,
            blocks: &tc,
            logits: false,
        },
    ];
    let out = model.forward(&mut cache, &batch).unwrap();
    assert_eq!(out.dims(), &[2, model.config().vocab]);
    assert!(max_abs_diff(&out.get(0).unwrap(), &la) < 1e-5);
    assert!(max_abs_diff(&out.get(1).unwrap(), &lb) < 1e-5);
}

#[test]
fn bad_steps_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_llama_safetensors(dir.path(), &TinyLlama::default(), 6).unwrap();
    let model = LlamaModel::load(dir.path(), DeviceId::Cpu).unwrap();
    let mut cache = model.new_kv_cache(2, 4).unwrap();
    let vocab = model.config().vocab as u32;
    let cases: Vec<(Vec<u32>, usize, Vec<BlockId>)> = vec![
        (vec![], 0, vec![0]),        // no tokens
        (vec![vocab], 0, vec![0]),   // outside the vocabulary
        (vec![1; 5], 0, vec![0]),    // table too short
        (vec![1], 0, vec![9]),       // block outside the storage
        (vec![1], 300, vec![0; 80]), // past the context
    ];
    for (tokens, start, blocks) in &cases {
        let s = SeqStep {
            tokens,
            start: *start,
            blocks,
            logits: true,
        };
        let err = model.forward(&mut cache, &[s]).unwrap_err();
        assert!(matches!(err, TextError::InvalidInput { .. }), "{err}");
    }
    assert!(model.forward(&mut cache, &[]).is_err());
    // Two sequences writing the same slot.
    let s = SeqStep {
        tokens: &[1],
        start: 0,
        blocks: &[0],
        logits: true,
    };
    assert!(model.forward(&mut cache, &[s, s]).is_err());
    // A cache for another model.
    let other = tempfile::tempdir().unwrap();
    let spec = TinyLlama {
        num_layers: 1,
        ..TinyLlama::default()
    };
    tiny::write_llama_safetensors(other.path(), &spec, 6).unwrap();
    let small = LlamaModel::load(other.path(), DeviceId::Cpu).unwrap();
    let mut wrong = small.new_kv_cache(2, 4).unwrap();
    let s = SeqStep {
        tokens: &[1],
        start: 0,
        blocks: &[0],
        logits: true,
    };
    assert!(model.forward(&mut wrong, &[s]).is_err());
}

#[test]
fn missing_and_misshapen_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(LlamaModel::load(dir.path(), DeviceId::Cpu).is_err());
    tiny::write_llama_safetensors(dir.path(), &TinyLlama::default(), 6).unwrap();
    // A config that disagrees with the weights.
    let cfg = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json["intermediate_size"] = 96.into();
    std::fs::write(&cfg, json.to_string()).unwrap();
    let err = LlamaModel::load(dir.path(), DeviceId::Cpu).unwrap_err();
    assert!(matches!(err, TextError::ModelLoad { .. }), "{err}");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF not really").unwrap();
    assert!(LlamaModel::load(&junk, DeviceId::Cpu).is_err());
}

#[test]
fn llama3_rope_scaling_matches_candle_transformers() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_llama_safetensors(dir.path(), &TinyLlama::default(), 12).unwrap();
    let prompt: Vec<u32> = (0..120).map(|i| (i * 37 + 5) % 250).collect();
    let plain = ours_last_logits(
        &LlamaModel::load(dir.path(), DeviceId::Cpu).unwrap(),
        &prompt,
        16,
    );
    let cfg = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json["rope_scaling"] = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let model = LlamaModel::load(dir.path(), DeviceId::Cpu).unwrap();
    let scaled = ours_last_logits(&model, &prompt, 16);
    let reference = reference_safetensors(dir.path(), &prompt);
    let diff = max_abs_diff(&scaled, &reference);
    assert!(diff < 1e-4, "max |diff| {diff}");
    // The scaling did change the model.
    assert!(max_abs_diff(&scaled, &plain) > 1e-4);
}

#[test]
fn qwen2_with_biases_matches_candle_transformers_qwen2() {
    use candle_transformers::models::qwen2;
    let dir = tempfile::tempdir().unwrap();
    let spec = TinyLlama {
        qwen2: true,
        ..TinyLlama::default()
    };
    let st = dir.path().join("st");
    tiny::write_llama_safetensors(&st, &spec, 13).unwrap();
    let model = LlamaModel::load(&st, DeviceId::Cpu).unwrap();
    assert_eq!(model.config().flavor, switchyard_text::LlamaFlavor::Qwen2);
    let ours = ours_last_logits(&model, &PROMPT, 4);

    let cfg: qwen2::Config =
        serde_json::from_str(&std::fs::read_to_string(st.join("config.json")).unwrap()).unwrap();
    #[allow(unsafe_code)]
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[st.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let mut reference = qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
    let x = Tensor::new(&PROMPT, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let expected = reference
        .forward(&x, 0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let diff = max_abs_diff(&ours, &expected);
    assert!(diff < 1e-4, "safetensors: max |diff| {diff}");

    // The GGUF copy (architecture qwen2, rows not permuted, biases in F32).
    let gguf = dir.path().join("q.gguf");
    tiny::write_llama_gguf(&gguf, &spec, GgufQuant::F32, 13).unwrap();
    let from_gguf = LlamaModel::load(&gguf, DeviceId::Cpu).unwrap();
    let diff = max_abs_diff(&ours_last_logits(&from_gguf, &PROMPT, 4), &expected);
    assert!(diff < 1e-4, "gguf: max |diff| {diff}");

    // Without its biases the file is refused, not run wrongly.
    let no_bias = dir.path().join("nb");
    tiny::write_llama_safetensors(&no_bias, &TinyLlama::default(), 13).unwrap();
    let cfg = no_bias.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json["model_type"] = "qwen2".into();
    std::fs::write(&cfg, json.to_string()).unwrap();
    let err = LlamaModel::load(&no_bias, DeviceId::Cpu).unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
}

#[test]
fn f16_and_bf16_safetensors_load_and_match_candle_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let d = dir.path().join(format!("{dtype:?}"));
        let spec = TinyLlama {
            dtype,
            ..TinyLlama::default()
        };
        tiny::write_llama_safetensors(&d, &spec, 14).unwrap();
        let model = LlamaModel::load(&d, DeviceId::Cpu).unwrap();
        // On the CPU the weights are widened and the model computes in f32.
        assert_eq!(model.dtype(), DType::F32);
        let ours = ours_last_logits(&model, &PROMPT, 4);
        let reference = reference_safetensors(&d, &PROMPT);
        let diff = max_abs_diff(&ours, &reference);
        assert!(diff < 1e-4, "{dtype:?}: max |diff| {diff}");
    }
}

/// A tiny Llama in `quant` (sized for K-quants' 256-wide super-blocks)
/// written to `dir`.
fn tiny_gguf(dir: &Path, quant: GgufQuant, seed: u64) -> std::path::PathBuf {
    let spec = TinyLlama {
        hidden_size: 256,
        intermediate_size: 512,
        ..TinyLlama::default()
    };
    let path = dir.join(format!("{quant:?}.gguf"));
    tiny::write_llama_gguf(&path, &spec, quant, seed).unwrap();
    path
}

#[test]
fn q5_and_k_quant_gguf_files_match_candle_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for quant in [
        GgufQuant::Q5_0,
        GgufQuant::Q5_1,
        GgufQuant::Q4_1,
        GgufQuant::Q4K,
        GgufQuant::Q5K,
        GgufQuant::Q6K,
    ] {
        let path = tiny_gguf(dir.path(), quant, 15);
        let model = load_candle_matmul(&path);
        let ours = ours_last_logits(&model, &PROMPT, 16);
        let diff = max_abs_diff(&ours, &reference_gguf(&path, &PROMPT));
        assert!(diff < 1e-4, "{quant:?}: max |diff| {diff}");
    }
}

/// The default path (switchyard-kernels: activations rounded to 8-bit
/// blocks) against candle-transformers' quantized Llama on every block
/// format: logits within the activation-rounding error, same top token.
#[test]
fn kernel_matmuls_match_candle_transformers_within_activation_rounding() {
    let dir = tempfile::tempdir().unwrap();
    for quant in [
        GgufQuant::Q4_0,
        GgufQuant::Q4_1,
        GgufQuant::Q5_0,
        GgufQuant::Q5_1,
        GgufQuant::Q8_0,
        GgufQuant::Q4K,
        GgufQuant::Q5K,
        GgufQuant::Q6K,
    ] {
        let path = tiny_gguf(dir.path(), quant, 21);
        let model = LlamaModel::load(&path, DeviceId::Cpu).unwrap();
        assert!(model.uses_kernels(), "{quant:?}");
        let ours = ours_last_logits(&model, &PROMPT, 16);
        let reference = reference_gguf(&path, &PROMPT);
        let diff = max_abs_diff(&ours, &reference);
        let scale = reference
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("{quant:?}: max |diff| {diff} (max |logit| {scale})");
        assert!(
            diff < 3e-2 * scale,
            "{quant:?}: max |diff| {diff}, max |logit| {scale}"
        );
        let top = |t: &Tensor| t.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(top(&ours), top(&reference), "{quant:?}");
    }
}

/// Logits after each of `prompts` fed in chunks of `chunk`, all sequences
/// in every step, with interleaved (non-adjacent) block tables.
fn chunked_batch_logits(model: &LlamaModel, prompts: &[&[u32]], chunk: usize) -> Vec<Vec<f32>> {
    let block_size = 4;
    let per_seq = 8;
    let mut cache = model
        .new_kv_cache(per_seq * prompts.len(), block_size)
        .unwrap();
    let tables: Vec<Vec<BlockId>> = (0..prompts.len())
        .map(|s| {
            (0..per_seq)
                .map(|b| (b * prompts.len() + s) as BlockId)
                .collect()
        })
        .collect();
    let mut last = vec![Vec::new(); prompts.len()];
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    for start in (0..longest).step_by(chunk) {
        let (who, steps): (Vec<usize>, Vec<SeqStep<'_>>) = prompts
            .iter()
            .enumerate()
            .filter(|(_, p)| start < p.len())
            .map(|(s, p)| {
                let end = (start + chunk).min(p.len());
                let step = SeqStep {
                    tokens: &p[start..end],
                    start,
                    blocks: &tables[s],
                    logits: end == p.len(),
                };
                (s, step)
            })
            .unzip();
        let wants: Vec<usize> = who
            .iter()
            .zip(&steps)
            .filter(|(_, st)| st.logits)
            .map(|(&s, _)| s)
            .collect();
        let logits = model.forward(&mut cache, &steps).unwrap();
        for (row, s) in wants.into_iter().enumerate() {
            last[s] = logits.get(row).unwrap().to_vec1().unwrap();
        }
    }
    last
}

/// On the kernel path every row's result is computed the same way whatever
/// else is in the step (kernel rows are independent, attention is one
/// function for prefill and decode), so chunking and batching change no bit.
#[test]
fn kernel_path_logits_are_bitwise_independent_of_chunks_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), GgufQuant::Q4_1, 33);
    let model = LlamaModel::load(&path, DeviceId::Cpu).unwrap();
    assert!(model.uses_kernels());
    let other: [u32; 5] = [9, 8, 7, 6, 5];
    let alone = chunked_batch_logits(&model, &[&PROMPT], PROMPT.len());
    for chunk in [1, 2, 4] {
        let got = chunked_batch_logits(&model, &[&other, &PROMPT], chunk);
        assert_eq!(got[1], alone[0], "chunk {chunk}");
    }
}
