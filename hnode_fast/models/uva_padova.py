"""The UVA/Padova type-1 diabetes simulator's interaction graph (the HGS glucose prior).

Written from the published model structure, not from any implementation's equations:
Dalla Man, Rizza & Cobelli, *Meal simulation model of the glucose-insulin system*, IEEE TBME
54(10), 2007 (glucose-insulin subsystems, the oral glucose absorption model of Dalla Man et
al. 2006); Kovatchev et al., *In silico preclinical trials*, J Diabetes Sci Technol 3(1), 2009
(the T1D simulator: subcutaneous insulin, subcutaneous glucose sensor compartment); Dalla
Man et al., *The UVA/PADOVA type 1 diabetes simulator: new features*, J Diabetes Sci Technol
8(1), 2014 (adds glucagon and hypoglycaemia-dependent utilisation, not included here: the 2008
version is the one ``simglucose`` implements).

States (13; units of the papers)::

    Qsto1, Qsto2   glucose in the stomach, solid and liquid phase (mg)
    Qgut           glucose in the intestine (mg)
    Gp, Gt         plasma and tissue glucose (mg/kg)
    Ip, Il         plasma and liver insulin (pmol/kg)
    X              insulin action on glucose utilisation (remote insulin)
    I1, Id         delayed insulin signals acting on endogenous glucose production
    Isc1, Isc2     subcutaneous insulin, non-monomeric and monomeric (pmol/kg)
    Gs             subcutaneous glucose (mg/dL), what a CGM measures

Inputs: ``carbs`` (ingested carbohydrate rate) and ``insulin`` (subcutaneous insulin rate,
basal + boluses). Observable: ``Gs``.

Edges (u enters dv/dt), by process:

- meal: carbs -> Qsto1 (ingestion); Qsto1 -> Qsto2 (grinding); the gastric emptying rate
  k_empt depends on the total stomach content Qsto1 + Qsto2, so Qsto1, Qsto2 -> Qsto2 and
  Qsto1, Qsto2 -> Qgut; Qgut -> Gp (rate of appearance Ra).
- glucose: Gp <-> Gt (exchange k1, k2); endogenous production EGP = kp1 - kp2 Gp - kp3 Id, so
  Gp, Id -> Gp; renal excretion depends on Gp; utilisation Uid = (Vm0 + Vmx X) Gt / (Km0 + Gt),
  so X, Gt -> Gt.
- insulin: insulin -> Isc1 -> Isc2; Isc1, Isc2 -> Ip (absorption ka1, ka2); Ip <-> Il (hepatic
  exchange m1, m2); Ip -> X, Ip -> I1 -> Id (through I = Ip / Vi).
- sensor: Gp -> Gs (Gs relaxes to plasma glucose with rate ksc).
- every state has a self loop (first-order clearance or saturation of its own value).

The two cycles Gp <-> Gt and Ip <-> Il are what HGS collapses into one node each.
"""

from __future__ import annotations

from ..hgs.spec import HGSGraph

__all__ = ["uva_padova_graph", "UVA_PADOVA_STATES"]

UVA_PADOVA_STATES = ("Qsto1", "Qsto2", "Qgut", "Gp", "Gt", "Ip", "X", "I1", "Id", "Il", "Isc1", "Isc2", "Gs")

_EDGES = (
    # meal absorption
    ("carbs", "Qsto1"),
    ("Qsto1", "Qsto2"),
    ("Qsto2", "Qsto2"),
    ("Qsto1", "Qgut"),
    ("Qsto2", "Qgut"),
    ("Qgut", "Gp"),
    # glucose kinetics, production, excretion, utilisation
    ("Gt", "Gp"),
    ("Id", "Gp"),
    ("Gp", "Gt"),
    ("X", "Gt"),
    # insulin kinetics and action
    ("insulin", "Isc1"),
    ("Isc1", "Isc2"),
    ("Isc1", "Ip"),
    ("Isc2", "Ip"),
    ("Il", "Ip"),
    ("Ip", "Il"),
    ("Ip", "X"),
    ("Ip", "I1"),
    ("I1", "Id"),
    # CGM compartment
    ("Gp", "Gs"),
)


def uva_padova_graph(self_loops: bool = True) -> HGSGraph:
    """The UVA/Padova T1D model's interaction graph (13 states, inputs ``carbs`` and
    ``insulin``, observable ``Gs``) as a :class:`hnode_fast.hgs.HGSGraph`.

    ``self_loops=False`` leaves out the self loops (each state then does not see itself unless
    it sits on a cycle, which the relaxation turns into a self loop of the merged node)."""
    edges = list(_EDGES)
    if self_loops:
        edges += [(s, s) for s in UVA_PADOVA_STATES if (s, s) not in edges]
    return HGSGraph(states=UVA_PADOVA_STATES, inputs=("carbs", "insulin"), observables=("Gs",), edges=edges)
