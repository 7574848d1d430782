"""Test oracle: AdaNeg as the authors compute it, transcribed (deliberately, for the reference test)
from YBZh/OpenOOD-VLM at commit 804f3310d3045c24fdd896da6c508c919fb47f0c,
openood/postprocessors/ttaprompt_postprocessor.py, ``TTAPromptPostprocessor_noadagap.postprocess``
(samada False, in_score "combine", random_permute True: scripts/ood/adaneg/imagenet.sh), with the
evaluator's stream (openood/evaluators/fsood_evaluator_clip.py: ConcatDataset([ood, id]), shuffled,
memory reset per pair). Changes, each needed to run it here and named:

- the network call is replaced by given features (image_features, text_features = cat[ID; negatives],
  logit_scale);
- the DataLoader's unseeded shuffle is a given permutation of cat([OoD, ID]);
- torch.sort of the slot entropies is stable (on CUDA the order of ties is unspecified);
- the predicted class (pred_in) is not returned.
"""

from __future__ import annotations

import torch


class Postprocessor:
    def __init__(self, memory_size=10, lambda_val=0.1, thres=0.5, gap=0.5, group_num=5):
        self.memory_size, self.lambda_val, self.thres, self.gap = memory_size, lambda_val, thres, gap
        self.group_num, self.random_permute, self.reset = group_num, True, True

    def _grouped(self, output, class_num):
        pos_logit = output[:, :class_num]
        neg_logit = output[:, class_num:]
        drop = neg_logit.size(1) % self.group_num
        if drop > 0:
            neg_logit = neg_logit[:, :-drop]
        torch.manual_seed(0)
        idx = torch.randperm(neg_logit.shape[1])
        neg_logit = neg_logit.T
        neg_logit = neg_logit[idx].T.reshape(pos_logit.shape[0], self.group_num, -1).contiguous()
        scores = []
        for i in range(self.group_num):
            full_sim = torch.cat([pos_logit, neg_logit[:, i, :]], dim=-1)
            full_sim = full_sim.softmax(dim=-1)
            scores.append(full_sim[:, :pos_logit.shape[1]].sum(dim=-1).unsqueeze(-1))
        return torch.cat(scores, dim=-1).mean(dim=-1)

    def _cache(self, activate_indicator, output_vanilla, image_features, offset, stop):
        _, pred_all = torch.max(output_vanilla[:, offset:stop], dim=1)
        prob = torch.softmax(output_vanilla[:, offset:stop], dim=1)
        for i in range(activate_indicator.size(0)):
            if activate_indicator[i].item():
                cate = pred_all[i].item() + offset
                entropy = -(prob[i] * (torch.log(prob[i] + 1e-8))).sum()
                if self.indice_memory[cate] == self.memory_size:
                    if (entropy < self.entropy_memory[cate]).sum() == 0:
                        pass
                    else:
                        _, indice = torch.sort(self.entropy_memory[cate], stable=True)
                        self.feat_memory[cate][indice[-1]] = image_features[i]
                        self.entropy_memory[cate][indice[-1]] = entropy
                else:
                    self.feat_memory[cate][self.indice_memory[cate].long()] = image_features[i]
                    self.entropy_memory[cate][self.indice_memory[cate].long()] = entropy
                    self.indice_memory[cate] += 1

    def postprocess(self, image_features, text_features, logit_scale, class_num):
        if self.reset:
            self.feat_memory = text_features.unsqueeze(1)
            empty = torch.zeros_like(self.feat_memory).repeat(1, self.memory_size, 1)
            self.feat_memory = torch.cat((self.feat_memory, empty), dim=1)
            self.indice_memory = torch.ones(text_features.size(0))
            self.entropy_memory = torch.zeros(self.feat_memory.size(0), self.feat_memory.size(1),
                                              dtype=text_features.dtype)
            self.reset = False
        output_vanilla = logit_scale * image_features @ text_features.t()
        conf_in_vanilla = self._grouped(output_vanilla, class_num)
        self._cache(conf_in_vanilla > (self.thres + self.gap * (1 - self.thres)), output_vanilla, image_features,
                    0, class_num)
        self._cache(conf_in_vanilla < (self.thres - self.gap * self.thres), output_vanilla, image_features,
                    class_num, None)
        sa_text_features = self.feat_memory.mean(1)
        sa_text_features /= sa_text_features.norm(dim=-1, keepdim=True)
        output = logit_scale * (image_features.unsqueeze(1) * sa_text_features).sum(-1)
        conf_in = self._grouped(output, class_num)
        return conf_in + conf_in_vanilla * self.lambda_val


def stream_scores(id_features, ood_features, class_text, negatives, logit_scale, permutation, batch_size=256,
                  **kwargs):
    """(ID scores, OoD scores) of one pair: the evaluator's cat([OoD, ID]) in ``permutation``'s order."""
    post = Postprocessor(**kwargs)
    combined = torch.cat([ood_features, id_features])
    text_features = torch.cat([class_text, negatives])
    conf = torch.empty(combined.shape[0], dtype=torch.float64)
    for batch in permutation.split(batch_size):
        conf[batch] = post.postprocess(combined[batch], text_features, logit_scale, class_text.shape[0]).double()
    n_ood = ood_features.shape[0]
    return conf[n_ood:], conf[:n_ood]
