// Package hf reads and writes Hugging Face checkpoint directories of
// Llama-family decoders — config.json (LlamaConfig's keys) beside
// model.safetensors, or shards named by model.safetensors.index.json —
// with the tensor names and shapes transformers' from_pretrained expects,
// and checks a checkpoint against its configuration with errors that name
// the disagreement. It covers Llama 2/3, SmolLM, TinyLlama, Mistral without
// a sliding window, and Qwen2 (q/k/v biases).
package hf

import (
	"encoding/json"
	"fmt"
)

// Config is a decoder's config.json: the keys LlamaConfig (and Mistral's
// and Qwen2's, where they agree) define. Keys this package does not know
// are kept and written back.
type Config struct {
	ModelType             string   `json:"model_type"`
	Architectures         []string `json:"architectures,omitempty"`
	VocabSize             int      `json:"vocab_size"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumKeyValueHeads      int      `json:"num_key_value_heads,omitempty"`
	HeadDim               int      `json:"head_dim,omitempty"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	RMSNormEps            float64  `json:"rms_norm_eps"`
	RopeTheta             float64  `json:"rope_theta,omitempty"`
	TieWordEmbeddings     bool     `json:"tie_word_embeddings"`
	AttentionBias         bool     `json:"attention_bias,omitempty"`
	SlidingWindow         *int     `json:"sliding_window,omitempty"`
	TorchDtype            string   `json:"torch_dtype,omitempty"`

	extra map[string]json.RawMessage
}

// ParseConfig reads a config.json document.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("config.json: %w", err)
	}
	if err := json.Unmarshal(b, &c.extra); err != nil {
		return c, fmt.Errorf("config.json: %w", err)
	}
	for _, k := range []string{"model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
		"num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
		"tie_word_embeddings", "attention_bias", "sliding_window", "torch_dtype"} {
		delete(c.extra, k)
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads // LlamaConfig's default
	}
	if c.ModelType == "llama" && c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	return c, c.Check()
}

// MarshalJSON writes the known keys and the kept ones.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config
	b, err := json.Marshal(plain(c))
	if err != nil {
		return nil, err
	}
	m := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range c.extra {
		m[k] = v
	}
	return json.MarshalIndent(m, "", "  ")
}

// HeadSize is the dimension of one attention head.
func (c Config) HeadSize() int {
	if c.HeadDim > 0 {
		return c.HeadDim
	}
	if c.NumAttentionHeads == 0 {
		return 0
	}
	return c.HiddenSize / c.NumAttentionHeads
}

// QKVBias says whether the attention projections q, k, v have biases
// (Qwen2 always; Llama with attention_bias).
func (c Config) QKVBias() bool { return c.ModelType == "qwen2" || c.AttentionBias }

// Check refuses a configuration fedtune cannot run, naming the key.
func (c Config) Check() error {
	switch c.ModelType {
	case "llama", "qwen2":
	case "mistral":
		if c.SlidingWindow != nil && *c.SlidingWindow < c.MaxPositionEmbeddings {
			return fmt.Errorf("config.json: mistral with sliding_window %d < max_position_embeddings %d is not supported (full causal attention only)", *c.SlidingWindow, c.MaxPositionEmbeddings)
		}
	default:
		return fmt.Errorf("config.json: model_type %q is not supported (llama, mistral, qwen2)", c.ModelType)
	}
	for _, f := range []struct {
		key string
		v   int
	}{{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads}, {"num_key_value_heads", c.NumKeyValueHeads}} {
		if f.v <= 0 {
			return fmt.Errorf("config.json: %s is %d, want a positive number", f.key, f.v)
		}
	}
	if c.HeadDim == 0 && c.HiddenSize%c.NumAttentionHeads != 0 {
		return fmt.Errorf("config.json: hidden_size %d is not a multiple of num_attention_heads %d", c.HiddenSize, c.NumAttentionHeads)
	}
	if c.NumKeyValueHeads > c.NumAttentionHeads || c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return fmt.Errorf("config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.HeadSize()%2 != 0 {
		return fmt.Errorf("config.json: head size %d is odd; rotary embeddings rotate halves", c.HeadSize())
	}
	if !(c.RMSNormEps > 0) {
		return fmt.Errorf("config.json: rms_norm_eps %v, want a positive number", c.RMSNormEps)
	}
	return nil
}

// Shape is a tensor's name and shape in a checkpoint.
type Shape struct {
	Name  string
	Shape []int
}

// Layout lists the tensors of a checkpoint of c, in transformers' names.
func (c Config) Layout() []Shape {
	h, hd, kv := c.HiddenSize, c.HeadSize(), c.NumKeyValueHeads
	q := c.NumAttentionHeads * hd
	out := []Shape{{"model.embed_tokens.weight", []int{c.VocabSize, h}}}
	for i := 0; i < c.NumHiddenLayers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		out = append(out,
			Shape{p + "input_layernorm.weight", []int{h}},
			Shape{p + "self_attn.q_proj.weight", []int{q, h}},
			Shape{p + "self_attn.k_proj.weight", []int{kv * hd, h}},
			Shape{p + "self_attn.v_proj.weight", []int{kv * hd, h}},
			Shape{p + "self_attn.o_proj.weight", []int{h, q}},
			Shape{p + "post_attention_layernorm.weight", []int{h}},
			Shape{p + "mlp.gate_proj.weight", []int{c.IntermediateSize, h}},
			Shape{p + "mlp.up_proj.weight", []int{c.IntermediateSize, h}},
			Shape{p + "mlp.down_proj.weight", []int{h, c.IntermediateSize}})
		if c.QKVBias() {
			out = append(out,
				Shape{p + "self_attn.q_proj.bias", []int{q}},
				Shape{p + "self_attn.k_proj.bias", []int{kv * hd}},
				Shape{p + "self_attn.v_proj.bias", []int{kv * hd}})
		}
	}
	out = append(out, Shape{"model.norm.weight", []int{h}})
	if !c.TieWordEmbeddings {
		out = append(out, Shape{"lm_head.weight", []int{c.VocabSize, h}})
	}
	return out
}
