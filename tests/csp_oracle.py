"""Test oracle: CSP's negative pool as the authors build it, transcribed (deliberately, for the
reference test) from MengyuanChen21/NeurIPS2024-CSP at commit 3a7bdabeb89301053ba8bfc56b227b6d81b273e9,
mmcls/models/classifiers/multi_modal.py (the pool and the ``neg_centroid`` selection) and
class_names.py (the templates), with custom_config/clip-ViT-B16.py's settings (seed 0, pencentile
0.95, neg_topk 0.15). Changes, each needed to run it here and named:

- the word lists are given (theirs: os.listdir order over per-lexicographer-file .txt files, with
  one de-duplication across nouns and adjectives); ``encode`` stands for clip's encode_text;
- argsort is stable (on CUDA the order of ties is unspecified);
- it returns the selected words and features instead of storing them on the model.
"""

from __future__ import annotations

import itertools
import random

import torch

preset_noun_prompt_templates = [
    'a close-up photo of the nice {}.', 'a photo with the nice {}.', 'a good photo with the nice {}.',
    'a photo of the nice {}.', '{}', 'the {}', 'the good {}', 'the nice {}',
]
csp_templates = [
    '{} environment', '{} space', '{} object', '{} scene', '{} place', '{} item', '{} area', '{} view',
    '{} thing', '{} pattern', '{} structure', '{} landscape', '{} vista', '{} creature',
]
preset_adj_prompt_templates = ['{}', 'a nice photo of {}', 'a good photo of {}', 'a close-up photo of {}']


def pool(encode, class_name, nouns, adjectives, seed=0, pencentile=0.95, neg_topk=0.15):
    """(selected noun words, selected phrases, selected features)."""
    noun_prompt_templates = preset_noun_prompt_templates
    id_prompts = [pair[0].format(pair[1]) for pair in list(itertools.product(noun_prompt_templates, class_name))]
    text_features_pos = encode(id_prompts)
    feat_dim = text_features_pos.shape[-1]
    text_features_pos = text_features_pos.view(-1, len(class_name), feat_dim).mean(dim=0)
    text_features_pos /= text_features_pos.norm(dim=-1, keepdim=True)

    words_noun, words_adj, noun_names, phrases = [], [], [], []
    random.seed(seed)
    for line in nouns:
        noun_names.append(line)
        for template in noun_prompt_templates:
            words_noun.append(template.format(line.strip()))
    for line in adjectives:
        candidate = random.choice(csp_templates).format(line.strip())
        phrases.append(candidate)
        for template in preset_adj_prompt_templates:
            words_adj.append(template.format(candidate))
    noun_length, adj_length = len(nouns), len(adjectives)

    text_features_neg = encode(words_noun + words_adj)
    ensemble_noun_length = len(words_noun)
    noun_text_features_neg = text_features_neg[:ensemble_noun_length].view(-1, len(noun_prompt_templates), feat_dim).mean(dim=1)
    adj_text_features_neg = text_features_neg[ensemble_noun_length:].view(-1, len(preset_adj_prompt_templates), feat_dim).mean(dim=1)
    text_features_neg = torch.cat([noun_text_features_neg, adj_text_features_neg], dim=0)
    text_features_neg /= text_features_neg.norm(dim=-1, keepdim=True)

    text_features_neg = text_features_neg.to(torch.float32)
    tmp = text_features_neg @ text_features_pos.T
    tmp = tmp.to(torch.float32)
    sim = torch.quantile(tmp, q=pencentile, dim=-1)
    maximum = torch.max(tmp, dim=1)[0]
    sim[maximum > 0.95] = 1.0
    neg_sim_noun, neg_sim_adj = sim[:noun_length], sim[noun_length:]
    ind_noun = torch.argsort(neg_sim_noun, stable=True)
    ind_adj = torch.argsort(neg_sim_adj, stable=True)
    sel_noun = ind_noun[0:int(len(ind_noun) * neg_topk)]
    sel_adj = ind_adj[0:int(len(ind_adj) * neg_topk)]
    features = torch.cat([text_features_neg[:noun_length][sel_noun], text_features_neg[noun_length:][sel_adj]])
    return [noun_names[i] for i in sel_noun], [phrases[i] for i in sel_adj], features, maximum
