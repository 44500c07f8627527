use tract_linalg::mmm::{
    EagerPackedInput, MMMInputFormat, MMMInputValue, MatMatMul, PackedExoticFact,
    PackedMatrixStorage,
};
use tract_linalg::pack::{KOutWriter, PackedFormat, PackedI8K4, PackingWriter};

use crate::internal::*;
use ndarray::prelude::*;
use num_integer::Integer;

use crate::ops::cnn::pools::{ConcretePoolGeometry, PoolGeometry};
use crate::ops::cnn::{GeometryBound, PoolSpec, ResolveTo};
use crate::ops::downsample::copy_every_other;
use crate::ops::nn::{BaseDataShape, DataFormat, DataShape};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Im2Col {
    pub pool_spec: PoolSpec,
    pub group: usize,
    geometry: GeometryBound<SymbolicGeometry, ConcreteGeometry>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct SymbolicGeometry {
    group: usize,
    pool_spec: PoolSpec,
    pool_geometry: PoolGeometry,
    // The kernel's activation packing: PackedFormat (K-major) or PackedI8K4 (K=4-inner).
    out_format: Box<dyn MMMInputFormat>,
    k: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct ConcreteGeometry {
    pool: ConcretePoolGeometry,
    pub n: usize,
    k: usize,
    pub out_format: Box<dyn MMMInputFormat>,
    pub ci_per_group: usize,
    patcher: Patcher,
    input_shape_with_n: DataShape,
    packed_shape: TVec<usize>, // always Batch,Group
}

impl GeometryBound<SymbolicGeometry, ConcreteGeometry> {
    pub fn out_format(&self) -> &dyn MMMInputFormat {
        match self {
            GeometryBound::Symbolic(s) => &*s.out_format,
            GeometryBound::Concrete(s) => &*s.out_format,
        }
    }
    pub fn k(&self) -> usize {
        match self {
            GeometryBound::Symbolic(s) => s.k,
            GeometryBound::Concrete(s) => s.k,
        }
    }
}

impl ResolveTo<ConcreteGeometry> for SymbolicGeometry {
    type Param = [usize];
    fn resolve(&self, input_full_shape: &[usize]) -> TractResult<ConcreteGeometry> {
        let pool = self.pool_geometry.to_concrete(input_full_shape)?.into_owned();
        let patcher = match (pool.patch.rank(), pool.patch.padded) {
            (1, false) => Patcher::Valid1d,
            (1, true) => Patcher::Padded1d,
            (2, false) => Patcher::Valid2d,
            (2, true) => Patcher::Padded2d,
            _ => Patcher::Generic,
        };
        let ci_per_group = pool.input_shape.c_dim() / self.group;
        let n = pool.output_shape.hw_dims().iter().product();
        let input_shape_with_n = match self.pool_spec.data_format {
            DataFormat::HWC => DataFormat::NHWC.from_n_c_hw(
                1,
                *pool.input_shape.c(),
                pool.input_shape.hw_dims(),
            )?,
            DataFormat::CHW => DataFormat::NCHW.from_n_c_hw(
                1,
                *pool.input_shape.c(),
                pool.input_shape.hw_dims(),
            )?,
            _ => pool.input_shape.clone(),
        };
        let packed_shape = Im2Col::packed_shape(&pool.input_shape, self.group)?;
        Ok(ConcreteGeometry {
            pool,
            n,
            k: self.k,
            ci_per_group,
            out_format: self.out_format.clone(),
            patcher,
            input_shape_with_n,
            packed_shape,
        })
    }
}

impl Im2Col {
    pub fn new(
        pool_spec: PoolSpec,
        group: usize,
        k: usize,
        input_full_shape: &ShapeFact,
        mmm: Box<dyn MatMatMul>,
        packing: usize,
    ) -> TractResult<Im2Col> {
        let out_format = dyn_clone::clone_box(&*mmm.packings()[packing].1);
        let pool_geometry = pool_spec.compute_geo(input_full_shape)?;
        let geometry: GeometryBound<_, _> =
            SymbolicGeometry { group, pool_spec: pool_spec.clone(), pool_geometry, out_format, k }
                .into();
        let geometry = geometry.optimize_if(input_full_shape.as_concrete())?;
        Ok(Im2Col { pool_spec, group, geometry })
    }

    // packed shape is Batch,Group
    fn packed_shape<D: DimLike>(
        input_shape: &BaseDataShape<D, TVec<D>>,
        group: usize,
    ) -> TractResult<TVec<D>> {
        let mut output_shape: TVec<D> = tvec!();
        output_shape.push(input_shape.n().cloned().unwrap_or_else(|| 1.into()));
        output_shape.push(group.into());
        Ok(output_shape)
    }
}

impl Op for Im2Col {
    fn name(&self) -> StaticName {
        "Im2col".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("groups:{}", self.group)])
    }

    op_as_typed_op!();
}

impl EvalOp for Im2Col {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let geometry = self.geometry.to_concrete(inputs[0].shape())?;
        unsafe {
            let mut input = inputs.remove(0).into_tensor();
            let pad_value: Option<&Tensor> = if inputs.len() > 0 { Some(&inputs[0]) } else { None };
            if !self.pool_spec.data_format.has_n() {
                input.insert_axis(0)?;
            }
            let dt = input.datum_type();
            let r = geometry.out_format.r();
            // Buffer geometry. The writers fill every whole panel: PackedFormat has no K
            // padding, and K4RowsWriter writes PackedI8K4's K-padding lanes (k..k_aligned,
            // which SMOPA accumulates) as zeros. The mn-padding lanes of the partial last
            // panel are computed on (then discarded) by the kernel, so they still need
            // zeroing — garbage there decodes to denormals that stall the fp pipeline.
            // Done after allocation below.
            let (single_panel_len, buf_align) =
                if let Some(pf) = geometry.out_format.downcast_ref::<PackedFormat>() {
                    (pf.single_panel_len(geometry.k), pf.alignment())
                } else if let Some(p4) = geometry.out_format.downcast_ref::<PackedI8K4>() {
                    (p4.single_panel_len(geometry.k), p4.alignment())
                } else {
                    bail!("Im2Col: unsupported packing format {:?}", geometry.out_format)
                };
            let panel_bytes = single_panel_len * dt.size_of();

            let n_batches = *geometry.input_shape_with_n.n().unwrap_or(&1);
            let n_groups = self.group;
            let mut values: TVec<Box<dyn MMMInputValue>> =
                TVec::with_capacity(n_batches * n_groups);

            for i in 0..n_batches {
                let input = input.view_at_prefix(&[i])?;
                for g in 0..n_groups {
                    let n =
                        if geometry.pool.output_shape.shape.contains(&0) { 0 } else { geometry.n };
                    let mut data = Tensor::uninitialized_aligned_dt(
                        dt,
                        &[n.divceil(r) * single_panel_len],
                        buf_align,
                    )?;
                    if n % r != 0 {
                        data.as_bytes_mut()[(n / r) * panel_bytes..].fill(0);
                    }
                    if n > 0 {
                        dispatch_copy_by_size!(Patcher::patch(dt)(
                            &geometry.patcher,
                            &geometry,
                            &input,
                            &mut data.view_mut(),
                            g,
                            pad_value
                        ))?;
                    }
                    values.push(Box::new(EagerPackedInput {
                        fact: PackedExoticFact {
                            format: geometry.out_format.clone(),
                            k: geometry.k,
                            mn: n.to_dim(),
                        },
                        packed: data.into_blob()?.into(),
                        panel_bytes: if n > 0 { panel_bytes } else { 0 },
                        mn: n,
                    }));
                }
            }

            let output = PackedMatrixStorage::new_batched(&geometry.packed_shape, values)
                .into_tensor(input.datum_type());
            Ok(tvec!(output.into_tvalue()))
        }
    }
}

impl TypedOp for Im2Col {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input_shape = self.pool_spec.data_format.shape(inputs[0].shape.to_tvec())?;
        let output_shape = self.pool_spec.output_shape(&inputs[0].shape)?;
        let mn = output_shape.hw_dims().iter().product::<TDim>();
        let pof = PackedExoticFact {
            format: dyn_clone::clone_box(self.geometry.out_format()),
            k: self.geometry.k(),
            mn,
        };
        Ok(tvec!(
            inputs[0]
                .datum_type
                .fact(&[input_shape.n().cloned().unwrap_or(1.into()), self.group.into()])
                .with_exotic_fact(pof)
        ))
    }

    fn declutter(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        let input_fact = model.outlet_fact(node.inputs[0])?;
        if node.inputs.len() == 2
            && model.outlet_fact(node.inputs[1])?.konst.as_ref().and_then(|t| t.as_uniform())
                == Some(Tensor::zero_scalar_dt(input_fact.datum_type)?)
        {
            Ok(Some(
                TypedModelPatch::replace_single_op(model, node, &node.inputs[0..1], self.clone())?
                    .with_context("b0 is zero"),
            ))
        } else {
            Ok(None)
        }
    }
}

#[derive(Copy, Clone, Debug, Hash, PartialEq, Eq)]
enum Patcher {
    Generic,
    Valid1d,
    Valid2d,
    Padded1d,
    Padded2d,
}

impl Patcher {
    fn patch<'p, T: Copy + Datum + num_traits::Zero>(
        &self,
        geo: &'p ConcreteGeometry,
        input: &TensorView,
        pack: &'p mut TensorView,
        g: usize,
        pad_value: Option<&Tensor>,
    ) -> TractResult<()> {
        // Pick the packing writer for the kernel's output format, then run the
        // (writer-generic) patcher. PackedFormat keeps the K-major fast path;
        // PackedI8K4 writes the SMOPA K=4-inner layout in the same single pass.
        let ptr = unsafe { pack.as_slice_mut_unchecked::<T>().as_mut_ptr() };
        if let Some(pf) = geo.out_format.downcast_ref::<PackedFormat>() {
            let mut w = pf.write_with_k_outer(ptr, geo.k, geo.n);
            self.run::<T, _>(geo, input, g, pad_value, &mut w)
        } else if let Some(p4) = geo.out_format.downcast_ref::<PackedI8K4>() {
            let mut w = K4RowsWriter::new(ptr, p4.r, p4.single_panel_len(geo.k), geo.n);
            self.run::<T, _>(geo, input, g, pad_value, &mut w)?;
            w.finish();
            Ok(())
        } else {
            bail!("Im2Col: unsupported packing format {:?}", geo.out_format)
        }
    }

    fn run<T: Copy + Datum + num_traits::Zero, W: Im2colWriter<T>>(
        &self,
        geo: &ConcreteGeometry,
        input: &TensorView,
        g: usize,
        pad_value: Option<&Tensor>,
        writer: &mut W,
    ) -> TractResult<()> {
        match self {
            Patcher::Valid1d => Self::valid_1d::<T, W>(geo, input, g, writer),
            Patcher::Valid2d => Self::valid_2d::<T, W>(geo, input, g, writer),
            Patcher::Padded1d => Self::padded_1d::<T, W>(
                geo,
                input,
                g,
                pad_value.unwrap_or(&Tensor::zero_scalar::<T>()?),
                writer,
            ),
            Patcher::Padded2d => Self::padded_2d::<T, W>(
                geo,
                input,
                g,
                pad_value.unwrap_or(&Tensor::zero_scalar::<T>()?),
                writer,
            ),
            _ => Self::generic::<T, W>(
                geo,
                input,
                g,
                pad_value.unwrap_or(&Tensor::zero_scalar::<T>()?),
                writer,
            ),
        }
    }

    #[inline(never)]
    fn generic<T: Copy + Datum, W: Im2colWriter<T>>(
        geometry: &ConcreteGeometry,
        input: &TensorView,
        g: usize,
        pad_value: &Tensor,
        writer: &mut W,
    ) -> TractResult<()> {
        unsafe {
            let pad_value = *pad_value.to_scalar_unchecked();
            let mut mega_matrix = Tensor::uninitialized::<T>(&[geometry.k, geometry.n])?;
            let mut mega_matrix_view = mega_matrix.to_array_view_mut_unchecked::<T>();
            let ptr = input.as_ptr_unchecked::<T>();
            let ptr = ptr.add(geometry.input_shape_with_n.c_stride() * (g * geometry.ci_per_group));
            for (spatial, mut col) in ndarray::indices(&*geometry.pool.patch.output_shape)
                .into_iter()
                .zip(mega_matrix_view.axis_iter_mut(Axis(1)))
            {
                let mut col = col.iter_mut();
                for ci in 0..geometry.ci_per_group {
                    let ptr = ptr.add(geometry.input_shape_with_n.c_stride() * ci);
                    for v in geometry.pool.patch.at(spatial.slice()) {
                        *col.next().expect("geometry error in conv") =
                            v.map(|o| *ptr.offset(o)).unwrap_or(pad_value);
                    }
                }
            }
            // mega_matrix is [k, n] (k-major); feed K-outer to the writer, which
            // lays out the kernel's packing (K-major for PackedFormat, K=4-inner
            // for PackedI8K4) — byte-identical to PackedFormat::pack for the former.
            let mv = mega_matrix.as_slice_unchecked::<T>();
            for kk in 0..geometry.k {
                writer.write_slice(&mv[kk * geometry.n..(kk + 1) * geometry.n]);
            }
            Ok(())
        }
    }

    #[inline(never)]
    fn valid_1d<T: Copy + Datum, W: Im2colWriter<T>>(
        geometry: &ConcreteGeometry,
        input: &TensorView,
        g: usize,
        writer: &mut W,
    ) -> TractResult<()> {
        unsafe {
            let x_stride = *geometry.input_shape_with_n.h_stride() as isize
                * geometry.pool.patch.spec.strides[0] as isize;
            let c_stride = *geometry.input_shape_with_n.c_stride() as isize;
            let iptr = input.as_ptr_unchecked::<T>();
            let iptr = iptr.add(g * geometry.ci_per_group * geometry.input_shape_with_n.c_stride());
            let output_x = *geometry.pool.patch.output_shape.get_unchecked(0);
            // Fast path: stride-1 contiguous read along x. Replaces the
            // per-element pointer-arithmetic loop with a single write_slice
            // (memcpy when the slice fits in the current panel).
            // Byte-identical to the slow path (write_slice's contract).
            let contiguous_x = x_stride == 1;
            for ci in 0..geometry.ci_per_group {
                let iptr = iptr.offset(ci as isize * c_stride);
                for koffset in &geometry.pool.patch.standard_layout_data_field {
                    let iptr = iptr.offset(*koffset);
                    if contiguous_x {
                        let row = std::slice::from_raw_parts(iptr, output_x);
                        writer.write_slice(row);
                    } else {
                        // Hoist multiplication out of inner loop.
                        let mut iptr_x = iptr;
                        for _ in 0..output_x {
                            writer.write(*iptr_x);
                            iptr_x = iptr_x.offset(x_stride);
                        }
                    }
                }
            }
            Ok(())
        }
    }

    #[inline(never)]
    fn padded_1d<T: Copy + Datum, W: Im2colWriter<T>>(
        geometry: &ConcreteGeometry,
        input: &TensorView,
        g: usize,
        pad_value: &Tensor,
        writer: &mut W,
    ) -> TractResult<()> {
        unsafe {
            let pad_value = *pad_value.to_scalar_unchecked();
            let shape = &geometry.input_shape_with_n;
            let x_stride = geometry.pool.patch.spec.strides[0] as isize;
            let x_stride_ptr = x_stride * *shape.h_stride() as isize;
            let c_stride_ptr = *shape.c_stride() as isize;
            let input_width = shape.hw_dims()[0] as isize;
            let kernel_len = geometry.pool.patch.standard_layout_data_field.len();
            let iptr = input.as_ptr_unchecked::<T>();
            let iptr = iptr.add(g * geometry.ci_per_group * shape.c_stride());
            let output_width = *geometry.pool.patch.output_shape.get_unchecked(0);
            for ci in 0..geometry.ci_per_group {
                let iptr = iptr.offset(ci as isize * c_stride_ptr);
                for kitem in 0..kernel_len {
                    let dx = *geometry.pool.patch.data_field.as_ptr().add(kitem);
                    let valid_x_start =
                        Integer::div_ceil(&-dx, &x_stride).max(0).min(output_width as _);
                    let valid_x_end = Integer::div_ceil(&(input_width - dx), &x_stride)
                        .max(0)
                        .min(output_width as _);
                    let iptr = iptr.offset(
                        *geometry.pool.patch.standard_layout_data_field.get_unchecked(kitem),
                    );
                    Self::padded_invalid_x_loop(valid_x_start as usize, pad_value, &mut *writer);
                    Self::padded_valid_x_loop(
                        valid_x_start,
                        valid_x_end,
                        x_stride_ptr,
                        iptr,
                        &mut *writer,
                    );
                    Self::padded_invalid_x_loop(
                        output_width - valid_x_end as usize,
                        pad_value,
                        &mut *writer,
                    );
                }
            }
        }
        Ok(())
    }

    #[inline(never)]
    fn padded_2d<T: Copy + Datum, W: Im2colWriter<T>>(
        geometry: &ConcreteGeometry,
        input: &TensorView,
        g: usize,
        pad_value: &Tensor,
        writer: &mut W,
    ) -> TractResult<()> {
        unsafe {
            let pad_value = *pad_value.to_scalar_unchecked();
            let y_stride = geometry.pool.patch.spec.strides[0] as isize;
            let x_stride = geometry.pool.patch.spec.strides[1] as isize;
            let shape = &geometry.input_shape_with_n;
            let y_stride_ptr = y_stride * *shape.h_stride() as isize;
            let x_stride_ptr = x_stride * *shape.w_stride() as isize;
            let c_stride_ptr = *shape.c_stride() as isize;
            let input_heigth = shape.hw_dims()[0] as isize;
            let input_width = shape.hw_dims()[1] as isize;
            let kernel_len = geometry.pool.patch.standard_layout_data_field.len();
            let iptr = input.as_ptr_unchecked::<T>();
            let iptr = iptr.add(g * geometry.ci_per_group * shape.c_stride());
            let output_width = *geometry.pool.patch.output_shape.get_unchecked(1);
            for ci in 0..geometry.ci_per_group {
                let iptr = iptr.offset(ci as isize * c_stride_ptr);
                for kitem in 0..kernel_len {
                    let dy = *geometry.pool.patch.data_field.as_ptr().offset(kitem as isize * 2);
                    let dx =
                        *geometry.pool.patch.data_field.as_ptr().offset(1 + kitem as isize * 2);
                    let valid_x_start =
                        Integer::div_ceil(&-dx, &x_stride).max(0).min(output_width as _);
                    let valid_x_end = Integer::div_ceil(&(input_width - dx), &x_stride)
                        .max(0)
                        .min(output_width as _);

                    let iptr = iptr.offset(
                        *geometry.pool.patch.standard_layout_data_field.get_unchecked(kitem),
                    );
                    let output_height = *geometry.pool.patch.output_shape.get_unchecked(0);
                    // The output rows whose input row lies inside the image, as `valid_x` for
                    // the columns.
                    let valid_y_start =
                        Integer::div_ceil(&-dy, &y_stride).max(0).min(output_height as _);
                    let valid_y_end = Integer::div_ceil(&(input_heigth - dy), &y_stride)
                        .max(0)
                        .min(output_height as _);
                    let k_row = KRow {
                        iptr,
                        y_stride_ptr,
                        x_stride_ptr,
                        valid_y: valid_y_start as usize..valid_y_end as usize,
                        valid_x: valid_x_start as usize..valid_x_end as usize,
                        output_width,
                        pad_value,
                    };
                    if writer.write_run_with(output_height * output_width, |row| k_row.fill(row)) {
                        continue;
                    }
                    for yo in 0..output_height {
                        let y = yo as isize * y_stride + dy;
                        let iptr = iptr.offset(yo as isize * y_stride_ptr);
                        if y >= 0 && y < input_heigth {
                            Self::padded_invalid_x_loop(
                                valid_x_start as usize,
                                pad_value,
                                &mut *writer,
                            );
                            Self::padded_valid_x_loop(
                                valid_x_start,
                                valid_x_end,
                                x_stride_ptr,
                                iptr,
                                &mut *writer,
                            );
                            Self::padded_invalid_x_loop(
                                output_width - valid_x_end as usize,
                                pad_value,
                                &mut *writer,
                            );
                        } else {
                            Self::padded_invalid_x_loop(output_width, pad_value, &mut *writer);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[inline(always)]
    unsafe fn padded_invalid_x_loop<T: Copy + Datum, W: Im2colWriter<T>>(
        count: usize,
        pad_value: T,
        writer: &mut W,
    ) {
        writer.write_repeated(pad_value, count);
    }

    #[inline(always)]
    unsafe fn padded_valid_x_loop<T: Copy + Datum, W: Im2colWriter<T>>(
        x_min: isize,
        x_max: isize,
        x_stride_ptr: isize,
        iptr: *const T,
        writer: &mut W,
    ) {
        // Fast path: x_stride_ptr == 1 means consecutive x values are at
        // consecutive memory addresses, so the inner loop is a contiguous
        // slice write — byte-identical to the per-element loop.
        if x_stride_ptr == 1 && x_max > x_min {
            unsafe {
                let row = std::slice::from_raw_parts(iptr.offset(x_min), (x_max - x_min) as usize);
                writer.write_slice(row);
            }
        } else if x_max > x_min {
            unsafe {
                writer.write_strided(
                    iptr.offset(x_min * x_stride_ptr),
                    x_stride_ptr,
                    (x_max - x_min) as usize,
                )
            };
        }
    }

    #[inline(never)]
    fn valid_2d<T: Copy + Datum, W: Im2colWriter<T>>(
        geometry: &ConcreteGeometry,
        input: &TensorView,
        g: usize,
        writer: &mut W,
    ) -> TractResult<()> {
        unsafe {
            let shape = &geometry.input_shape_with_n;
            let y_stride = geometry.pool.patch.spec.strides[0] as isize;
            let x_stride = geometry.pool.patch.spec.strides[1] as isize;
            let y_stride_ptr = y_stride * *shape.h_stride() as isize;
            let x_stride_ptr = x_stride * *shape.w_stride() as isize;
            let c_stride_ptr = *shape.c_stride() as isize;
            let iptr = input.as_ptr_unchecked::<T>();
            let iptr = iptr.add(g * geometry.ci_per_group * shape.c_stride());
            let output_y = *geometry.pool.patch.output_shape.get_unchecked(0);
            let output_x = *geometry.pool.patch.output_shape.get_unchecked(1);
            // Fast path: stride-1 contiguous reads along x within each y-row.
            // Each y-row becomes a single write_slice (memcpy when the slice
            // fits in the current panel). Byte-identical to the slow path.
            let contiguous_x = x_stride_ptr == 1;
            for ci in 0..geometry.ci_per_group {
                let iptr = iptr.offset(ci as isize * c_stride_ptr);
                for koffset in &geometry.pool.patch.standard_layout_data_field {
                    let iptr = iptr.offset(*koffset);
                    let mut iptr_y = iptr;
                    for _ in 0..output_y {
                        if contiguous_x {
                            let row = std::slice::from_raw_parts(iptr_y, output_x);
                            writer.write_slice(row);
                        } else {
                            // Hoist x multiplication out of inner loop.
                            let mut iptr_x = iptr_y;
                            for _ in 0..output_x {
                                writer.write(*iptr_x);
                                iptr_x = iptr_x.offset(x_stride_ptr);
                            }
                        }
                        iptr_y = iptr_y.offset(y_stride_ptr);
                    }
                }
            }
            Ok(())
        }
    }
}

/// One K row of a padded 2D im2col (an input channel and a kernel tap over every output pixel),
/// for a writer that takes the row whole ([`Im2colWriter::write_run_with`]).
struct KRow<T> {
    /// The input at the channel and tap, before the output row's offset.
    iptr: *const T,
    y_stride_ptr: isize,
    x_stride_ptr: isize,
    /// The output rows whose input row lies inside the image.
    valid_y: std::ops::Range<usize>,
    /// The output columns whose input column lies inside the image.
    valid_x: std::ops::Range<usize>,
    output_width: usize,
    pad_value: T,
}

impl<T: Copy> KRow<T> {
    /// Writes the row into `row` (`output_width` values an output row): the output rows above
    /// and below the image all padding; in the others the valid columns copied (inline for the
    /// short runs, whole pairs for a stride of 2) between their padding.
    #[inline(always)]
    fn fill(&self, row: &mut [T]) {
        let output_width = self.output_width;
        let (rows, valid, pad) = (self.valid_y.clone(), self.valid_x.clone(), self.pad_value);
        if valid.is_empty() || rows.is_empty() {
            row.fill(pad);
            return;
        }
        row[..rows.start * output_width].fill(pad);
        row[rows.end * output_width..].fill(pad);
        let len = valid.len();
        if self.x_stride_ptr == 1 && self.y_stride_ptr == output_width as isize {
            // Stride 1 and input rows as wide as output rows (a "same" padding): the valid block
            // is one run of the input plane. Copied whole, it also puts the neighbouring row's
            // values where the padding goes, which is then stored over them.
            let first = rows.start * output_width + valid.start;
            let last = (rows.end - 1) * output_width + valid.end;
            assert!(rows.end * output_width <= row.len());
            // SAFETY: the run starts at output row `rows.start`'s first valid input and ends at
            // row `rows.end - 1`'s last one, all inside the image; the writes stay within `row`.
            unsafe {
                let from = self
                    .iptr
                    .offset(rows.start as isize * self.y_stride_ptr + valid.start as isize);
                std::ptr::copy_nonoverlapping(from, row.as_mut_ptr().add(first), last - first);
            }
            for out in row[rows.start * output_width..rows.end * output_width]
                .chunks_exact_mut(output_width)
            {
                let (left, rest) = out.split_at_mut(valid.start);
                fill_short(left, pad);
                fill_short(&mut rest[len..], pad);
            }
            return;
        }
        match self.x_stride_ptr {
            1 => self.each_valid_row(row, rows, |from, to| unsafe { copy_run(from, to, len) }),
            2 => self.each_valid_row(row, rows, |from, to| unsafe {
                copy_every_other(
                    std::slice::from_raw_parts(from, 2 * len - 1),
                    std::slice::from_raw_parts_mut(to, len),
                )
            }),
            stride => self.each_valid_row(row, rows, |from, to| unsafe {
                for x in 0..len {
                    *to.add(x) = *from.offset(x as isize * stride);
                }
            }),
        }
    }

    /// For each output row of `rows`: its padding on the left and right, and `copy` from the
    /// input at its first valid column to the output there.
    #[inline(always)]
    fn each_valid_row(
        &self,
        row: &mut [T],
        rows: std::ops::Range<usize>,
        copy: impl Fn(*const T, *mut T),
    ) {
        let (valid, pad, output_width) = (&self.valid_x, self.pad_value, self.output_width);
        let (left, right) = (valid.start, output_width - valid.end);
        assert!(rows.end * output_width <= row.len());
        // SAFETY: `rows` and `valid` are the output rows and columns whose input lies inside the
        // image, so every read is within the input; the writes stay within `row` (checked above).
        unsafe {
            let mut out = row.as_mut_ptr().add(rows.start * output_width);
            let mut from = self.iptr.offset(
                rows.start as isize * self.y_stride_ptr + valid.start as isize * self.x_stride_ptr,
            );
            for _ in rows {
                fill_short(std::slice::from_raw_parts_mut(out, left), pad);
                copy(from, out.add(left));
                fill_short(std::slice::from_raw_parts_mut(out.add(valid.end), right), pad);
                out = out.add(output_width);
                from = from.offset(self.y_stride_ptr);
            }
        }
    }
}

/// `slice.fill(value)` for the one or two values of padding at a row's ends, without the
/// `memset` call a fill of unknown length becomes.
#[inline(always)]
fn fill_short<T: Copy>(slice: &mut [T], value: T) {
    match slice.len() {
        0 => {}
        1 => slice[0] = value,
        2 => {
            slice[0] = value;
            slice[1] = value;
        }
        _ => slice.fill(value),
    }
}

/// What the patchers need of a packing writer: values one at a time or in slices
/// ([`PackingWriter`]), and a strided run or a run of padding, which a writer that gathers rows
/// takes faster than value by value (the defaults write them so).
trait Im2colWriter<T: Copy>: PackingWriter<T> {
    /// `count` values, `stride` values apart from `from` on.
    ///
    /// # Safety
    /// `from` must be valid for those `count` reads.
    #[inline(always)]
    unsafe fn write_strided(&mut self, from: *const T, stride: isize, count: usize) {
        for i in 0..count {
            self.write(unsafe { *from.offset(i as isize * stride) });
        }
    }

    /// `count` copies of `value`.
    #[inline(always)]
    fn write_repeated(&mut self, value: T, count: usize) {
        for _ in 0..count {
            self.write(value);
        }
    }

    /// The next `len` values, written by `fill` into room the writer hands out whole; false,
    /// calling nothing, where it has none (the patcher then writes them through the methods
    /// above).
    #[inline(always)]
    fn write_run_with(&mut self, len: usize, fill: impl FnOnce(&mut [T])) -> bool {
        let _ = (len, fill);
        false
    }
}

impl<T: Copy + std::fmt::Debug> Im2colWriter<T> for KOutWriter<'_, T> {}

/// Im2col's writer for the K=4-inner packing (`PackedI8K4`). The patchers feed it K-outer (for
/// each k, all `n` columns in order), so it gathers four K rows contiguously (a copy per slice),
/// then lays each group of four into the panels, four bytes a column (`ST4` on aarch64). The
/// output is byte-identical to `PackedI8K4::write_with_k_outer`'s writer, which instead places
/// every value at its panel offset one at a time (~13 instructions a byte on a Cortex-A76).
struct K4RowsWriter<T> {
    panels: *mut T,
    r: usize,
    panel_len: usize,
    n: usize,
    /// Four K rows of `n` values each, filled in order.
    rows: Vec<T>,
    filled: usize,
    /// The group of four K rows being gathered.
    k_block: usize,
}

impl<T: Copy + num_traits::Zero> K4RowsWriter<T> {
    fn new(panels: *mut T, r: usize, panel_len: usize, n: usize) -> Self {
        K4RowsWriter {
            panels,
            r,
            panel_len,
            n,
            rows: vec![T::zero(); 4 * n],
            filled: 0,
            k_block: 0,
        }
    }

    /// Counts `count` values written into the rows: the fourth row complete, lays the group out.
    /// (The patchers' runs lie within one K row, so within the four rows gathered.)
    #[inline(always)]
    fn advance(&mut self, count: usize) {
        self.filled += count;
        if self.filled == self.rows.len() {
            self.flush();
        }
    }

    /// Lays out a last group of fewer than four K rows (the missing rows are the K padding, zero).
    fn finish(&mut self) {
        if self.filled > 0 {
            self.rows[self.filled..].fill(T::zero());
            self.flush();
        }
    }

    fn flush(&mut self) {
        let n = self.n;
        let (r0, rest) = self.rows.split_at(n);
        let (r1, rest) = rest.split_at(n);
        let (r2, r3) = rest.split_at(n);
        // SAFETY: the buffer holds ceil(n / r) panels of `panel_len` (≥ 4·r per K group)
        // values, and `k_block` counts the groups of the `k` rows fed so far.
        unsafe {
            interleave4_panels(
                [r0, r1, r2, r3],
                self.r,
                self.panel_len,
                self.panels.add(self.k_block * self.r * 4),
            )
        };
        self.filled = 0;
        self.k_block += 1;
    }
}

/// Lays four K rows of `n` columns into their group of the panels: the values of columns
/// `p·r .. p·r + r` go to `dst + p·panel_len`, four consecutive values a column
/// (`dst[p·panel_len + 4·i + j] = row_j[p·r + i]`).
///
/// # Safety
/// `dst` must be valid for the writes into `ceil(n / r)` panels of `panel_len` values (≥ 4·r).
pub(crate) unsafe fn interleave4_panels<T: Copy>(
    rows: [&[T]; 4],
    r: usize,
    panel_len: usize,
    dst: *mut T,
) {
    let n = rows[0].len();
    let full = n / r;
    if !unsafe { st4_panels(rows, full, r, panel_len, dst) } {
        for panel in 0..full {
            let columns = rows.map(|row| &row[panel * r..(panel + 1) * r]);
            unsafe { interleave4(columns, dst.add(panel * panel_len)) };
        }
    }
    if n % r != 0 {
        unsafe { interleave4(rows.map(|row| &row[full * r..]), dst.add(full * panel_len)) };
    }
}

/// [`interleave4_panels`]' `full` whole panels with one `ST4` each, where the values are bytes
/// and the panels 8 columns wide (the SDOT kernel's); false, writing nothing, elsewhere.
#[cfg(target_arch = "aarch64")]
unsafe fn st4_panels<T: Copy>(
    rows: [&[T]; 4],
    full: usize,
    r: usize,
    panel_len: usize,
    dst: *mut T,
) -> bool {
    use std::arch::aarch64::*;
    if std::mem::size_of::<T>() != 1 || r != 8 {
        return false;
    }
    let [r0, r1, r2, r3] = rows.map(|row| row.as_ptr() as *const u8);
    for panel in 0..full {
        let at = panel * 8;
        unsafe {
            let columns = uint8x8x4_t(
                vld1_u8(r0.add(at)),
                vld1_u8(r1.add(at)),
                vld1_u8(r2.add(at)),
                vld1_u8(r3.add(at)),
            );
            vst4_u8(dst.add(panel * panel_len) as *mut u8, columns);
        }
    }
    true
}

#[cfg(not(target_arch = "aarch64"))]
unsafe fn st4_panels<T: Copy>(_: [&[T]; 4], _: usize, _: usize, _: usize, _: *mut T) -> bool {
    false
}

/// `dst[4·i + j] = rows[j][i]`.
///
/// # Safety
/// `dst` must be valid for `4 · rows[0].len()` writes; the rows are of equal length.
unsafe fn interleave4<T: Copy>(rows: [&[T]; 4], dst: *mut T) {
    for i in 0..rows[0].len() {
        for (j, row) in rows.iter().enumerate() {
            unsafe { *dst.add(4 * i + j) = row[i] };
        }
    }
}

impl<T: Copy + num_traits::Zero> Im2colWriter<T> for K4RowsWriter<T> {
    #[inline(always)]
    fn write_run_with(&mut self, len: usize, fill: impl FnOnce(&mut [T])) -> bool {
        let Some(room) = self.rows.get_mut(self.filled..self.filled + len) else {
            return false;
        };
        fill(room);
        self.advance(len);
        true
    }

    #[inline]
    unsafe fn write_strided(&mut self, from: *const T, stride: isize, count: usize) {
        let mut from = from;
        for slot in &mut self.rows[self.filled..self.filled + count] {
            unsafe {
                *slot = *from;
                from = from.offset(stride);
            }
        }
        self.advance(count);
    }

    #[inline]
    fn write_repeated(&mut self, value: T, count: usize) {
        // Mostly the one value of padding at a row's end: not worth a `memset` call.
        match count {
            0 => {}
            1 => self.write(value),
            _ => {
                self.rows[self.filled..self.filled + count].fill(value);
                self.advance(count);
            }
        }
    }
}

impl<T: Copy + num_traits::Zero> PackingWriter<T> for K4RowsWriter<T> {
    #[inline(always)]
    fn write(&mut self, t: T) {
        self.rows[self.filled] = t;
        self.advance(1);
    }

    #[inline]
    fn write_slice(&mut self, ts: &[T]) {
        assert!(self.filled + ts.len() <= self.rows.len());
        // SAFETY: checked just above; the rows are this writer's own buffer.
        unsafe { copy_run(ts.as_ptr(), self.rows.as_mut_ptr().add(self.filled), ts.len()) };
        self.advance(ts.len());
    }
}

/// Copies `count` values from `src` to `dst` like `copy_nonoverlapping`, with no call for the
/// short runs im2col copies (a row of an output plane: 7 to 112 values): whole 16, 8 or 4-byte
/// moves, the last of which may overlap the one before. A `memcpy` call cost about as much as
/// its copy of a 28-byte run (~18 instructions on a Cortex-A76).
///
/// # Safety
/// As `copy_nonoverlapping`: `src` valid for `count` reads, `dst` for `count` writes, apart.
#[inline(always)]
unsafe fn copy_run<T: Copy>(src: *const T, dst: *mut T, count: usize) {
    let bytes = count * std::mem::size_of::<T>();
    if bytes > 256 {
        return unsafe { std::ptr::copy_nonoverlapping(src, dst, count) };
    }
    let (src, dst) = (src as *const u8, dst as *mut u8);
    unsafe fn moves<W: Copy>(src: *const u8, dst: *mut u8, bytes: usize) {
        let width = std::mem::size_of::<W>();
        let mut at = 0;
        while at + width <= bytes {
            unsafe {
                let word = (src.add(at) as *const W).read_unaligned();
                (dst.add(at) as *mut W).write_unaligned(word);
            }
            at += width;
        }
        if at < bytes {
            let last = bytes - width;
            unsafe {
                let word = (src.add(last) as *const W).read_unaligned();
                (dst.add(last) as *mut W).write_unaligned(word);
            }
        }
    }
    unsafe {
        if bytes >= 16 {
            moves::<u128>(src, dst, bytes)
        } else if bytes >= 8 {
            moves::<u64>(src, dst, bytes)
        } else if bytes >= 4 {
            moves::<u32>(src, dst, bytes)
        } else {
            for at in 0..bytes {
                *dst.add(at) = *src.add(at);
            }
        }
    }
}

#[cfg(test)]
mod k4_rows_writer {
    use super::*;
    use tract_linalg::pack::KOut4Writer;

    impl<T: Copy + std::fmt::Debug> Im2colWriter<T> for KOut4Writer<'_, T> {}

    /// Feeds `k` rows of `n` values K-outer, in runs of `run` values, to both writers, each run
    /// through another of the writers' methods.
    fn both_writers(r: usize, k: usize, n: usize, run: usize) -> (Vec<i8>, Vec<i8>) {
        let format = PackedI8K4::new(r);
        let len = format.len(k, n);
        let values: Vec<i8> = (0..k * n).map(|i| (i * 37 % 251) as u8 as i8).collect();
        // The reference writer skips the K padding, so its buffer starts zeroed; the new one's
        // starts as garbage but for the partial last panel's lanes, as `Im2Col::eval` leaves it.
        let (mut expected, mut got) = (vec![0i8; len], vec![0x55i8; len]);
        got[(n / r) * format.single_panel_len(k)..].fill(0);
        let mut reference = format.write_with_k_outer(expected.as_mut_ptr(), k, n);
        let mut rows = K4RowsWriter::new(got.as_mut_ptr(), r, format.single_panel_len(k), n);
        fn feed<W: Im2colWriter<i8>>(writer: &mut W, part: &[i8], method: usize) {
            let spread: Vec<i8> = part.iter().flat_map(|v| [*v, 0]).collect();
            match method {
                0 => part.iter().for_each(|v| writer.write(*v)),
                1 => writer.write_slice(part),
                2 => unsafe { writer.write_strided(spread.as_ptr(), 2, part.len()) },
                _ => writer.write_repeated(part[0], part.len()),
            }
        }
        for row in values.chunks(n) {
            for (method, part) in row.chunks(run).enumerate() {
                feed(&mut reference, part, method % 4);
                feed(&mut rows, part, method % 4);
            }
        }
        rows.finish();
        (expected, got)
    }

    #[test]
    fn lays_out_the_same_bytes_as_the_k_outer_writer() {
        for r in [4, 8, 32] {
            for k in [1, 3, 4, 9, 27, 64] {
                for n in [1, 7, 8, 9, 49, 56] {
                    for run in [1, 5, n] {
                        let (expected, got) = both_writers(r, k, n, run);
                        assert_eq!(expected, got, "r={r} k={k} n={n} run={run}");
                    }
                }
            }
        }
    }

    /// The short-run copy against `copy_from_slice`, for bytes and words, every length up to past
    /// its `memcpy` threshold, from unaligned starts; nothing past the run is written.
    #[test]
    fn copy_run_copies_exactly_the_run() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(values: &[T], guard: T) {
            for offset in 0..3 {
                for count in 0..values.len() - offset {
                    let src = &values[offset..offset + count];
                    let mut dst = vec![guard; count + 40];
                    unsafe { copy_run(src.as_ptr(), dst.as_mut_ptr().add(offset), count) };
                    assert_eq!(&dst[offset..offset + count], src, "count {count}");
                    assert!(dst[..offset].iter().all(|v| *v == guard), "count {count}");
                    assert!(dst[offset + count..].iter().all(|v| *v == guard), "count {count}");
                }
            }
        }
        let bytes: Vec<i8> = (0..300).map(|i| (i * 7 % 127) as i8).collect();
        check(&bytes, -1);
        let words: Vec<i32> = (0..80).map(|i| i * 1001 + 1).collect();
        check(&words, -1);
    }

    /// The padded 2D patcher, which hands this writer whole K rows (`write_run_with`), against
    /// the generic patcher, which writes value by value: the same panels for strides 1, 2 and 3,
    /// paddings of 1 and 3, and widths that leave a stride-2 row's last pair short.
    #[test]
    fn padded_2d_k_rows_match_the_generic_patcher() -> TractResult<()> {
        use crate::ops::cnn::PaddingSpec;
        for (kernel, pad, stride, c, h, w) in [
            (3, 1, 1, 3, 7, 9),
            (5, 2, 1, 2, 6, 5),
            (3, 1, 1, 1, 1, 3),
            (3, 1, 2, 2, 8, 11),
            (7, 3, 2, 3, 13, 12),
            (3, 1, 3, 2, 10, 10),
            (1, 0, 1, 5, 4, 4),
        ] {
            let padding = PaddingSpec::Explicit(tvec![pad, pad], tvec![pad, pad]);
            let pool_spec = PoolSpec::new(
                DataFormat::NCHW,
                tvec![kernel, kernel],
                padding,
                None,
                Some(tvec![stride, stride]),
                c,
                4,
            );
            let shape = [1, c, h, w];
            let format = PackedI8K4::new(8);
            let k = c * kernel * kernel;
            let pool_geometry = pool_spec.compute_geo(&ShapeFact::from_dims(shape))?;
            let symbolic = SymbolicGeometry {
                group: 1,
                pool_spec: pool_spec.clone(),
                pool_geometry,
                out_format: Box::new(format.clone()),
                k,
            };
            let geometry = symbolic.resolve(&shape)?;
            let values: Vec<i8> =
                (0..shape.iter().product::<usize>()).map(|i| (i * 29 % 253) as u8 as i8).collect();
            let input = Tensor::from_shape(&shape, &values)?;
            let pad_value = tensor0(-7i8);
            let len = format.len(k, geometry.n);
            let mut got = vec![0i8; len];
            let mut want = vec![0i8; len];
            for (patcher, buffer) in [(geometry.patcher, &mut got), (Patcher::Generic, &mut want)] {
                let mut writer = K4RowsWriter::new(
                    buffer.as_mut_ptr(),
                    8,
                    format.single_panel_len(k),
                    geometry.n,
                );
                patcher.run::<i8, _>(&geometry, &input.view(), 0, Some(&pad_value), &mut writer)?;
                writer.finish();
            }
            assert_eq!(got, want, "kernel {kernel} stride {stride} pad {pad} {h}×{w}");
        }
        Ok(())
    }
}
