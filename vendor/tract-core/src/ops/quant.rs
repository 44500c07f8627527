#![allow(clippy::unnecessary_cast)]

use crate::internal::*;
use crate::ops::element_wise::ElementWiseOp;
use crate::ops::math::QScale;
use num_traits::AsPrimitive;
use tract_linalg::Scaler;
use tract_linalg::lut::Lut;
use tract_linalg::mmm::RoundingPolicy;

use super::binary::TypedBinOp;
use super::math::round_ties_to_even;

/// Rounds half to even. On aarch64 that is one FRINTN, which lets the quantisation loops
/// vectorise (the bit-level form branches on every value); elsewhere `f32::round_ties_even` may be
/// a libm call (x86_64 before SSE4.1), so the bit-level form stays. Both give the same values.
#[inline(always)]
fn round_half_to_even(x: f32) -> f32 {
    #[cfg(target_arch = "aarch64")]
    return x.round_ties_even();
    #[cfg(not(target_arch = "aarch64"))]
    return round_ties_to_even(x);
}

pub fn quantize_linear_f32_u8(x: f32, scale: f32, zero_point: i32) -> u8 {
    ((round_half_to_even(x * scale) as i32) + zero_point).clamp(u8::MIN as i32, u8::MAX as i32)
        as u8
}

pub fn quantize_linear_f32_i8(x: f32, scale: f32, zero_point: i32) -> i8 {
    ((round_half_to_even(x * scale) as i32) + zero_point).clamp(i8::MIN as i32, i8::MAX as i32)
        as i8
}

element_wise_oop!(quantize_linear_u8,
 QuantizeLinearU8 {
     scale: f32,
     zero_point: u8
 },
 [f16] => u8 |op, xs, ys| {
     xs.iter().zip(ys.iter_mut()).for_each(|(x,y)|
                                           *y = quantize_linear_f32_u8(x.to_f32(), op.scale, op.zero_point as i32)
                                          );
     Ok(())
 },
 [f32,i32] => u8 |op, xs, ys| {
     xs.iter().zip(ys.iter_mut()).for_each(|(x,y)|
                                           *y = quantize_linear_f32_u8(*x as f32, op.scale, op.zero_point as i32)
                                          );
     Ok(())
 };
 info: info_quantize_linear_u8
);

fn info_quantize_linear_u8(q: &QuantizeLinearU8) -> TractResult<Vec<String>> {
    Ok(vec![format!(
        "scale: {} zero_point: {} 1/scale: {}",
        q.scale,
        q.zero_point,
        q.scale.recip()
    )])
}

element_wise_oop!(quantize_linear_i8,
 QuantizeLinearI8 {
     scale: f32,
     zero_point: i8
 },
 [f32,i32] => i8 |op, xs, ys| {
     xs.iter().zip(ys.iter_mut()).for_each(|(x,y)|
                                           *y = quantize_linear_f32_i8(*x as f32, op.scale, op.zero_point as i32)
                                          );
     Ok(())
 };
 info: info_quantize_linear_i8
);

fn info_quantize_linear_i8(q: &QuantizeLinearI8) -> TractResult<Vec<String>> {
    Ok(vec![format!(
        "scale: {} zero_point: {} 1/scale: {}",
        q.scale,
        q.zero_point,
        q.scale.recip()
    )])
}

#[derive(Clone, Debug, new, PartialEq)]
pub struct DequantizeLinearF32 {
    pub scale: f32,
    pub zero_point: i32,
}

impl Eq for DequantizeLinearF32 {}

impl DequantizeLinearF32 {
    fn eval_t<T: Datum + AsPrimitive<i32>>(&self, input: &Tensor) -> TractResult<Tensor> {
        let mut output = unsafe { Tensor::uninitialized::<f32>(input.shape())? };
        input
            .try_as_plain_ram()?
            .as_slice::<T>()?
            .iter()
            .zip(output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?.iter_mut())
            .for_each(|(x, y)| *y = (x.as_() - self.zero_point) as f32 * self.scale);
        Ok(output)
    }
}

impl Op for DequantizeLinearF32 {
    fn name(&self) -> StaticName {
        "DequantizeLinearF32".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale: {} zero_point: {}", self.scale, self.zero_point)])
    }

    fn validation(&self) -> Validation {
        Validation::Accurate
    }

    op_as_typed_op!();
}

impl EvalOp for DequantizeLinearF32 {
    op_out_of_plan!();
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let output = match inputs[0].datum_type() {
            DatumType::I8 => self.eval_t::<i8>(&inputs[0])?,
            DatumType::I32 => self.eval_t::<i32>(&inputs[0])?,
            DatumType::U8 => self.eval_t::<u8>(&inputs[0])?,
            dt => bail!("Unsupported type {:?}", dt),
        };
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DequantizeLinearF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::datum_type().fact(inputs[0].shape.clone())))
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        AxesMapping::natural(inputs, outputs)
    }

    fn change_axes(
        &self,
        model: &TypedModel,
        node: &TypedNode,
        _io: InOut,
        change: &AxisOp,
    ) -> TractResult<Option<AxisChangeConsequence>> {
        Ok(Some(AxisChangeConsequence::new(model, node, None, change)))
    }

    fn declutter(
        &self,
        model: &TypedModel,
        dequant: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        if let Some(patch) = self.table_then_max_pool(model, dequant)? {
            return Ok(Some(patch));
        }
        let mut current = dequant;
        let incoming_dt = model.node_input_facts(dequant.id)?[0].datum_type;
        while let Some(quant) = model.single_succ(current.id)? {
            if let Some((scale, zero_point, dt)) = quantize_params(quant) {
                // first, try Op::quantize() on all ops in the chain
                let mut patch = TypedModelPatch::default();
                let mut wire: OutletId = patch.tap_model(model, dequant.inputs[0])?;
                let mut next = model.single_succ(dequant.id)?.unwrap();
                loop {
                    if next.inputs.len() != 1 {
                        break;
                    }
                    if let Some(op) = next
                        .op
                        .quantize(model, dequant, dt, scale, zero_point)
                        .with_context(|| format!("Quantizing {next}"))?
                    {
                        wire = patch.wire_node(&*next.name, op, [wire].as_ref())?[0];
                    } else {
                        break;
                    }
                    if next.id == current.id {
                        patch.shunt_outside(model, OutletId::new(quant.id, 0), wire)?;
                        return Ok(Some(patch));
                    } else {
                        next = model.single_succ(next.id)?.unwrap();
                    }
                }
                // or else make a lookup table
                if incoming_dt == DatumType::I8 || incoming_dt == DatumType::U8 {
                    let mut chain = tvec!();
                    let mut next = model.single_succ(dequant.id)?.unwrap();
                    while next.id != quant.id {
                        chain.push(next);
                        next = model.single_succ(next.id)?.unwrap();
                    }
                    let op = lookup_table(chain_table(model, dequant, &chain, quant, dt)?);
                    let name = chain.first().map(|node| &*node.name).unwrap_or(&*dequant.name);
                    let mut patch = TypedModelPatch::default();
                    let mut wire: OutletId = patch.tap_model(model, dequant.inputs[0])?;
                    wire = patch.wire_node(name, op, [wire].as_ref())?[0];
                    patch.shunt_outside(model, OutletId::new(quant.id, 0), wire)?;
                    return Ok(Some(patch));
                }
            }
            let (input_facts, output_facts) = model.node_facts(quant.id)?;
            let invariants = quant
                .op
                .axes_mapping(&input_facts, &output_facts)
                .with_context(|| format!("Querying invariants for {quant}"))?;
            if invariants.is_element_wise_unary() || scalar_operand(model, quant)?.is_some() {
                current = quant;
            } else {
                break;
            }
        }
        Ok(None)
    }

    as_op!();
}

impl DequantizeLinearF32 {
    /// Dequantise, ReLU-like clamps (`max` or `min` against a constant), a max pool and quantise
    /// again, as a quantised network's stem runs them: a look-up table of the element-wise part,
    /// then the same max pool on its bytes. Every step is monotonic (the scales are positive), so
    /// the maximum commutes with them and the bytes are the same, for a quarter of the data the
    /// pool reads and writes in f32.
    fn table_then_max_pool(
        &self,
        model: &TypedModel,
        dequant: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        let incoming_dt = model.node_input_facts(dequant.id)?[0].datum_type;
        rule_if!(incoming_dt == DatumType::I8 || incoming_dt == DatumType::U8);
        rule_if!(self.scale > 0.0);
        let mut chain = tvec!();
        let mut next = model.single_succ(dequant.id)?;
        while let Some(node) = next {
            let clamp = node
                .op_as::<TypedBinOp>()
                .is_some_and(|op| op.0.is::<super::math::Max>() || op.0.is::<super::math::Min>());
            if !(clamp && scalar_operand(model, node)?.is_some()) {
                break;
            }
            chain.push(node);
            next = model.single_succ(node.id)?;
        }
        rule_if_some!(pool = next);
        rule_if!(
            pool.op_as::<super::cnn::MaxPool>().is_some_and(|op| op.with_index_outputs.is_none())
        );
        rule_if_some!(quant = model.single_succ(pool.id)?);
        rule_if_some!((scale, _, dt) = quantize_params(quant));
        rule_if!(scale > 0.0);
        let table = lookup_table(chain_table(model, dequant, &chain, quant, dt)?);
        let name = chain.first().map(|node| &*node.name).unwrap_or(&*dequant.name);
        let mut patch = TypedModelPatch::default();
        let wire = patch.tap_model(model, dequant.inputs[0])?;
        let wire = patch.wire_node(name, table, &[wire])?;
        let wire = patch.wire_node(&*pool.name, pool.op.clone(), &wire)?[0];
        patch.shunt_outside(model, OutletId::new(quant.id, 0), wire)?;
        Ok(Some(patch))
    }
}

/// The inverse scale, zero point and output type of a quantising node.
fn quantize_params(node: &TypedNode) -> Option<(f32, i32, DatumType)> {
    let op = node.op_as::<ElementWiseOp>()?;
    if let Some(op) = op.0.downcast_ref::<QuantizeLinearU8>() {
        Some((op.scale, op.zero_point as i32, u8::datum_type()))
    } else {
        op.0.downcast_ref::<QuantizeLinearI8>()
            .map(|op| (op.scale, op.zero_point as i32, i8::datum_type()))
    }
}

/// The table of `dequant`, then `chain` (unary ops, or binary ones with a constant operand), then
/// `quant`, over the 256 values of a byte of type `dt`.
fn chain_table(
    model: &TypedModel,
    dequant: &TypedNode,
    chain: &[&TypedNode],
    quant: &TypedNode,
    dt: DatumType,
) -> TractResult<Box<dyn Lut>> {
    let mut adhoc_model = TypedModel::default();
    let mut wire = adhoc_model.add_source("ad-hoc", dt.fact([256]))?;
    wire = adhoc_model.wire_node(&*dequant.name, dequant.op.clone(), [wire].as_ref())?[0];
    for node in chain {
        let inputs = match scalar_operand(model, node)? {
            Some((slot, value)) => {
                let value = adhoc_model.add_const(format!("{}.operand", node.name), value)?;
                if slot == 0 { tvec!(value, wire) } else { tvec!(wire, value) }
            }
            None => tvec!(wire),
        };
        wire = adhoc_model.wire_node(&*node.name, node.op.clone(), &inputs)?[0];
    }
    wire = adhoc_model.wire_node(&*quant.name, quant.op.clone(), [wire].as_ref())?[0];
    adhoc_model.select_output_outlets(&[wire])?;
    let input = (0u8..=255).collect::<Vec<u8>>();
    let input = match dt {
        DatumType::I8 => unsafe { tensor1(std::mem::transmute::<&[u8], &[i8]>(&*input)) },
        DatumType::U8 => tensor1(&input),
        _ => unreachable!(),
    };
    let output = SimplePlan::new(adhoc_model)?.run(tvec!(input.into_tvalue()))?.remove(0);
    let table: &[u8] = match dt {
        DatumType::I8 => unsafe {
            std::mem::transmute::<&[i8], &[u8]>(output.try_as_plain_ram()?.as_slice::<i8>()?)
        },
        DatumType::U8 => output.try_as_plain_ram()?.as_slice::<u8>()?,
        _ => unreachable!(),
    };
    tract_linalg::routines::lut_u8(table)
}

/// The constant operand of `node` when it is a binary op between the value a dequantised chain
/// carries and one constant number (a ReLU is `max(x, 0)`): that operand's slot and the number as
/// a one-value vector, so a look-up table of the chain can apply the op to its 256 inputs.
fn scalar_operand(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(usize, Tensor)>> {
    rule_if!(node.op_is::<TypedBinOp>() && node.inputs.len() == 2);
    let facts = model.node_input_facts(node.id)?;
    let slot = facts.iter().position(|fact| fact.konst.is_some());
    rule_if_some!(slot = slot);
    let chain = &facts[1 - slot];
    rule_if!(chain.konst.is_none());
    rule_if!(model.outlet_fact(node.id.into())?.shape == chain.shape);
    let value = facts[slot].konst.as_ref().unwrap();
    rule_if!(value.len() == 1);
    Ok(Some((slot, value.clone().into_tensor().into_shape(&[1])?)))
}

element_wise_oop!(lookup_table,
 LookupTable {
     table: Box<dyn Lut>
 },
 [i8] => i8 |op, xs, ys| {
     unsafe {
         let xs = std::slice::from_raw_parts(xs.as_ptr() as *const u8, xs.len());
         let ys = std::slice::from_raw_parts_mut(ys.as_mut_ptr() as *mut u8, ys.len());
         look_up(&*op.table, xs, ys);
     }
     Ok(())
 },
 [u8] => u8 |op, xs, ys| {
     look_up(&*op.table, xs, ys);
     Ok(())
 }
);

/// `ys[i] = table[xs[i]]`. On aarch64 sixteen bytes at a time with four `TBL`/`TBX` over the
/// 256-byte table held in sixteen registers (tract-linalg's only table kernel there is the
/// byte-by-byte generic one); elsewhere through `table`'s kernel, in place.
fn look_up(table: &dyn Lut, xs: &[u8], ys: &mut [u8]) {
    debug_assert_eq!(xs.len(), ys.len());
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of every aarch64 target; the table is 256 bytes (`Lut`'s inputs are
        // bytes) and every access stays within xs and ys, whose lengths are equal.
        unsafe {
            use std::arch::aarch64::*;
            let t = table.table();
            assert_eq!(t.len(), 256);
            let quarter = |q: usize| {
                uint8x16x4_t(
                    vld1q_u8(t.as_ptr().add(64 * q)),
                    vld1q_u8(t.as_ptr().add(64 * q + 16)),
                    vld1q_u8(t.as_ptr().add(64 * q + 32)),
                    vld1q_u8(t.as_ptr().add(64 * q + 48)),
                )
            };
            let (t0, t1, t2, t3) = (quarter(0), quarter(1), quarter(2), quarter(3));
            let sixty_four = vdupq_n_u8(64);
            let whole = xs.len() / 16 * 16;
            for at in (0..whole).step_by(16) {
                // TBL gives 0 for an index past its 64 bytes, TBX keeps what is there: each
                // quarter of the table fills the lanes whose index falls in it.
                let i0 = vld1q_u8(xs.as_ptr().add(at));
                let i1 = vsubq_u8(i0, sixty_four);
                let i2 = vsubq_u8(i1, sixty_four);
                let i3 = vsubq_u8(i2, sixty_four);
                let mut y = vqtbl4q_u8(t0, i0);
                y = vqtbx4q_u8(y, t1, i1);
                y = vqtbx4q_u8(y, t2, i2);
                y = vqtbx4q_u8(y, t3, i3);
                vst1q_u8(ys.as_mut_ptr().add(at), y);
            }
            for (x, y) in xs[whole..].iter().zip(&mut ys[whole..]) {
                *y = t[*x as usize];
            }
        }
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        ys.copy_from_slice(xs);
        table.run(ys);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Scale;

impl crate::ops::binary::BinMiniOp for Scale {
    fn name(&self) -> &'static str {
        "Scale"
    }
    fn result_datum_type(&self, a: DatumType, b: DatumType) -> TractResult<DatumType> {
        if !a.is_float() {
            bail!("Scale left operand must be float, got {:?}", a);
        }
        Ok(b)
    }

    fn operating_datum_type(&self, a: DatumType, b: DatumType) -> TractResult<DatumType> {
        if !a.is_float() {
            bail!("Scale left operand must be float, got {:?}", a);
        }
        Ok(b)
    }

    fn eval_out_of_place(&self, c: &mut Tensor, a: &Tensor, b: &Tensor) -> TractResult<()> {
        let a = a.cast_to::<f32>()?;
        let a = a.to_plain_array_view::<f32>()?;
        unsafe fn eval_out_of_place_t<T: Datum + AsPrimitive<f32>>(
            c: &mut Tensor,
            a: &ndarray::ArrayViewD<f32>,
            b: &Tensor,
        ) where
            f32: AsPrimitive<T>,
        {
            let b = unsafe { b.to_array_view_unchecked::<T>() };
            let mut c = unsafe { c.to_array_view_mut_unchecked::<T>() };
            ndarray::Zip::from(&mut c)
                .and_broadcast(a)
                .and_broadcast(b)
                .for_each(|c, a, b| *c = scale_by(*b, *a))
        }
        unsafe { dispatch_numbers!(eval_out_of_place_t(b.datum_type())(c, &a, b)) }
        Ok(())
    }

    fn eval_in_a(&self, a: &mut Tensor, b: &Tensor) -> TractResult<()> {
        let mut a_plain = a.try_as_plain_ram_mut()?;
        let a = a_plain.to_array_view_mut::<f32>()?;
        let b = b.to_plain_array_view::<f32>()?;
        ndarray::Zip::from(a).and_broadcast(b).for_each(|a, b| *a = scale_by(*b, *a));
        Ok(())
    }

    fn is_commutative(&self) -> bool {
        false
    }

    fn declutter(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        let a = model.outlet_fact(node.inputs[0])?;
        if let Some(a) = &a.uniform {
            if a.cast_to_scalar::<f32>()? == 1. {
                return Ok(Some(TypedModelPatch::rewire(
                    model,
                    &node.inputs[1..2],
                    &[node.id.into()],
                    &|_p, x| Ok(x.into()),
                )?));
            } else if node.outputs[0].fact.datum_type == DatumType::I32 {
                let factor = a.cast_to_scalar::<f32>()?;
                let scaler = Scaler::new(factor, RoundingPolicy::Even);

                let op = ElementWiseOp(Box::new(QScale { scaler }), None);
                let patch =
                    TypedModelPatch::replace_single_op(model, node, &node.inputs[1..2], op)?;

                return Ok(Some(patch));
            }
        }
        Ok(None)
    }
}

#[inline]
pub(crate) fn scale_by<T: Datum + AsPrimitive<f32>>(b: T, a: f32) -> T
where
    f32: AsPrimitive<T>,
{
    let b = b.as_();
    (round_ties_to_even(b.abs() * a) * b.signum()).as_()
}

pub fn scale() -> TypedBinOp {
    TypedBinOp(Box::new(Scale), None)
}

/// Offsets i8 integers as u8 integers.
pub(crate) fn offset_i8_as_u8_elementwise(x: i8) -> u8 {
    (x as u8).wrapping_add(128)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetI8asU8;
impl ElementWiseMiniOp for OffsetI8asU8 {
    fn name(&self) -> String {
        format!("{}{}", self.prefix(), stringify!(OffsetI8asU8))
    }
    fn output_type(&self, input_type: DatumType) -> Option<DatumType> {
        Some(if let DatumType::QI8(qp) = input_type {
            let (zp, scale) = qp.zp_scale();
            DatumType::QU8(QParams::ZpScale { zero_point: zp + 128, scale })
        } else if input_type == DatumType::I8 {
            DatumType::U8
        } else {
            input_type
        })
    }
    fn eval_out_of_place(&self, t: &Tensor, out_dt: Option<DatumType>) -> TractResult<Tensor> {
        let output_type = out_dt.unwrap_or(self.output_type(t.datum_type()).unwrap());
        let mut dst = unsafe { Tensor::uninitialized_dt(output_type, t.shape())? };
        if t.datum_type().unquantized() == i8::datum_type() {
            t.try_as_plain_ram()?
                .as_slice::<i8>()?
                .iter()
                .zip(dst.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?.iter_mut())
                .for_each(|(x, y)| *y = offset_i8_as_u8_elementwise(*x));
            return Ok(dst);
        }

        bail!("{} does not support {:?}", self.name(), t.datum_type());
    }
}

pub fn offset_i8_as_u8() -> ElementWiseOp {
    ElementWiseOp(Box::new(OffsetI8asU8 {}), None)
}

/// Offsets u8 integers as i8 integers.
pub(crate) fn offset_u8_as_i8_elementwise(x: u8) -> i8 {
    x.wrapping_sub(128) as i8
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetU8asI8;
impl ElementWiseMiniOp for OffsetU8asI8 {
    fn name(&self) -> String {
        format!("{}{}", self.prefix(), stringify!(OffsetU8asI8))
    }
    fn output_type(&self, input_type: DatumType) -> Option<DatumType> {
        Some(if let DatumType::QU8(qp) = input_type {
            let (zp, scale) = qp.zp_scale();
            DatumType::QI8(QParams::ZpScale { zero_point: zp - 128, scale })
        } else if input_type == DatumType::U8 {
            DatumType::I8
        } else {
            input_type
        })
    }
    fn eval_out_of_place(&self, t: &Tensor, out_dt: Option<DatumType>) -> TractResult<Tensor> {
        let output_type = out_dt.unwrap_or(self.output_type(t.datum_type()).unwrap());
        let mut dst = unsafe { Tensor::uninitialized_dt(output_type, t.shape())? };
        if t.datum_type().unquantized() == u8::datum_type() {
            t.try_as_plain_ram()?
                .as_slice::<u8>()?
                .iter()
                .zip(dst.try_as_plain_ram_mut()?.as_slice_mut::<i8>()?.iter_mut())
                .for_each(|(x, y)| *y = offset_u8_as_i8_elementwise(*x));
            return Ok(dst);
        }

        bail!("{} does not support {:?}", self.name(), t.datum_type());
    }
}
pub fn offset_u8_as_i8() -> ElementWiseOp {
    ElementWiseOp(Box::new(OffsetU8asI8 {}), None)
}

#[cfg(test)]
pub mod scale {
    use crate::internal::*;
    use crate::ops::einsum::EinSum;
    use crate::ops::math::round_ties_to_even;
    use proptest::prelude::*;

    fn test_scale(a: i8, b: i8, scale: f32) {
        let expected = (((a as i32) * (b as i32)) as f32) / scale;
        let expected = round_ties_to_even(expected.abs()) * expected.signum();
        let expected = (expected as i32).clamp(-128, 127);

        let input = tvec!(tensor2(&[[b]]).into_tvalue());
        let mut model = TypedModel::default();
        let a = model.add_const("a", tensor2(&[[a]])).unwrap();
        let b = model.add_source("b", i8::fact([1, 1])).unwrap();
        let bias = model.add_const("bias", tensor0(0i32)).unwrap();
        let a0 = model.add_const("a0", tensor0(0i8)).unwrap();
        let a_scale = model.add_const("a_scale", tensor0(1f32)).unwrap();
        let b0 = model.add_const("b0", tensor0(0i8)).unwrap();
        let b_scale = model.add_const("b_scale", tensor0(1f32)).unwrap();
        let c0 = model.add_const("c0", tensor0(0i8)).unwrap();
        let c_scale = model.add_const("c_scale", tensor0(scale)).unwrap();
        let op = EinSum {
            axes: "mk,kn,,,,,,,->mn".parse().unwrap(),
            operating_dt: i32::datum_type(),
            q_params: Some(i8::datum_type()),
        };
        let output = model
            .wire_node("mmm", op, &[a, b, bias, a0, a_scale, b0, b_scale, c0, c_scale])
            .unwrap();
        model.select_output_outlets(&output).unwrap();

        let plain = model.clone().into_runnable().unwrap().run(input.clone()).unwrap();
        let optim = model.into_optimized().unwrap().into_runnable().unwrap().run(input).unwrap();

        // The reference divides in f32, the plain path multiplies by the folded f32 scale, the
        // optimized one by its Q0_31 fixed-point form: three roundings that can straddle a tie.
        for (label, found) in [("plain", &plain[0]), ("optimized", &optim[0])] {
            let found = found.cast_to_scalar::<i32>().unwrap();
            assert!((found - expected).abs() <= 1, "{label}: expected {expected}, found {found}");
        }
    }

    proptest! {
        #[test]
        fn prop(a in any::<i8>(), b in any::<i8>(), scale in 0.00001f32..1000.) {
            test_scale(a, b, scale);
        }
    }

    #[test]
    fn t1() {
        test_scale(-117, 15, 37.753822);
    }

    #[test]
    fn t2() {
        test_scale(-4, -60, 475.21674);
    }

    #[test]
    fn t3() {
        test_scale(120, 101, 692.5715);
    }
}

#[cfg(test)]
mod fused_chains {
    use super::*;
    use crate::ops::math;

    /// Dequantise, ReLU (`max(x, 0)` against a constant) and quantise with other parameters:
    /// decluttered into one look-up table that gives what the three ops give, for every byte.
    #[test]
    fn relu_between_dequantise_and_quantise_becomes_a_table() -> TractResult<()> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", u8::fact([2, 256]))?;
        let dequant = DequantizeLinearF32 { scale: 0.031, zero_point: 117 };
        let wire = model.wire_node("dequant", dequant, &[x])?;
        let zero = model.add_const("zero", tensor2(&[[0f32]]))?;
        let wire = model.wire_node("relu", math::max(), &[wire[0], zero])?;
        let quant = quantize_linear_u8(0.053f32.recip(), 3);
        let wire = model.wire_node("quant", quant, &wire)?;
        model.select_output_outlets(&wire)?;

        let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let input = tvec!(Tensor::from_shape(&[2, 256], &bytes)?.into_tvalue());
        let want = model.clone().into_runnable()?.run(input.clone())?.remove(0);
        let decluttered = model.into_decluttered()?;
        let ops: Vec<String> = decluttered
            .nodes
            .iter()
            .filter(|n| !n.op_is::<crate::ops::source::TypedSource>())
            .map(|n| n.op.name().to_string())
            .collect();
        assert_eq!(ops, ["LookupTable"]);
        let got = decluttered.into_runnable()?.run(input)?.remove(0);
        assert_eq!(got, want);
        Ok(())
    }

    /// The stem of a quantised ResNet: dequantise, ReLU, a 3×3 max pool with stride 2 and padding,
    /// quantise. Decluttered into a table and the pool on bytes; the same bytes come out.
    #[test]
    fn max_pool_between_dequantise_and_quantise_runs_on_bytes() -> TractResult<()> {
        use crate::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
        use crate::ops::nn::DataFormat;
        let shape = [1, 3, 11, 12];
        let mut model = TypedModel::default();
        let x = model.add_source("x", u8::fact(shape))?;
        let dequant = DequantizeLinearF32 { scale: 0.031, zero_point: 117 };
        let wire = model.wire_node("dequant", dequant, &[x])?;
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]]))?;
        let wire = model.wire_node("relu", math::max(), &[wire[0], zero])?;
        let padding = PaddingSpec::ExplicitOnnxPool(tvec![1, 1], tvec![1, 1], false);
        let pool_spec =
            PoolSpec::new(DataFormat::NCHW, tvec![3, 3], padding, None, Some(tvec![2, 2]), 3, 3);
        let wire =
            model.wire_node("pool", MaxPool { pool_spec, with_index_outputs: None }, &wire)?;
        let quant = quantize_linear_u8(0.047f32.recip(), 5);
        let wire = model.wire_node("quant", quant, &wire)?;
        model.select_output_outlets(&wire)?;

        let bytes: Vec<u8> =
            (0..shape.iter().product::<usize>()).map(|i| (i * 89 % 256) as u8).collect();
        let input = tvec!(Tensor::from_shape(&shape, &bytes)?.into_tvalue());
        let want = model.clone().into_runnable()?.run(input.clone())?.remove(0);
        let optimised = model.into_optimized()?;
        let ops: Vec<String> = optimised
            .nodes
            .iter()
            .filter(|n| !n.op_is::<crate::ops::source::TypedSource>())
            .map(|n| n.op.name().to_string())
            .collect();
        assert_eq!(ops, ["LookupTable", "OptMaxPool"]);
        let got = optimised.into_runnable()?.run(input)?.remove(0);
        assert_eq!(got, want);
        Ok(())
    }

    /// The vector look-up against the table read byte by byte, over lengths around its 16.
    #[test]
    fn look_up_matches_the_table() -> TractResult<()> {
        let table: Vec<u8> = (0..=255u8).map(|b| b.wrapping_mul(37).wrapping_add(11)).collect();
        let lut = tract_linalg::routines::lut_u8(&table)?;
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 257, 600] {
            let xs: Vec<u8> = (0..len).map(|i| (i * 97 + len) as u8).collect();
            let mut ys = vec![0u8; len];
            look_up(&*lut, &xs, &mut ys);
            let want: Vec<u8> = xs.iter().map(|x| table[*x as usize]).collect();
            assert_eq!(ys, want, "length {len}");
        }
        Ok(())
    }
}
